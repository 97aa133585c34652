# The repository root, whichever folder cmake was pointed at (tests read tests/data/ from it).
get_filename_component(QS_REPO_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

# qs_cc_test(NAME name SRCS a.cc b.cc DEPS lib... LABELS unit)
# Builds one gtest binary and registers each of its tests with ctest.
function(qs_cc_test)
  cmake_parse_arguments(T "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gtest_main)
  include(GoogleTest)
  gtest_discover_tests(${T_NAME}
    WORKING_DIRECTORY ${QS_REPO_ROOT}
    PROPERTIES LABELS "${T_LABELS}"
    DISCOVERY_TIMEOUT 60)
endfunction()

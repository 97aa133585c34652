// The progress of a job on stderr: a bar with ETA on a terminal, a line per stage (and per 10%)
// otherwise. Shared by `qsearch run` and `qsearch watch`.
#ifndef QS_SERVER_PROGRESS_H_
#define QS_SERVER_PROGRESS_H_

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace qs::server {

// A bar with ETA on a terminal, a plain line per stage (and per 10%) otherwise.
class ProgressPrinter {
 public:
  ProgressPrinter() : tty_(::isatty(STDERR_FILENO) == 1) {}

  void Update(const std::string& stage, size_t done, size_t total) {
    auto now = std::chrono::steady_clock::now();
    if (stage != stage_) {
      if (tty_ && line_open_) std::fprintf(stderr, "\n");
      line_open_ = false;
      stage_ = stage;
      stage_start_ = now;
      first_done_ = done;
      last_decile_ = -1;
    }
    const double frac = total ? static_cast<double>(done) / total : 1.0;
    const double secs = std::chrono::duration<double>(now - stage_start_).count();
    double eta = -1;
    if (done > first_done_ && total > done) {
      eta = secs / static_cast<double>(done - first_done_) * static_cast<double>(total - done);
    }
    if (tty_) {
      const int width = 30, filled = static_cast<int>(frac * width);
      std::string bar(filled, '#');
      bar += std::string(width - filled, '.');
      std::fprintf(stderr, "\r%-9s [%s] %zu/%zu %3.0f%% %s   ", stage.c_str(), bar.c_str(), done,
                   total, 100 * frac,
                   eta >= 0 ? ("ETA " + std::to_string(static_cast<int>(eta + 0.5)) + "s").c_str()
                            : "");
      line_open_ = true;
      // The last stages end their line, so the summary on stdout starts on its own.
      if (done >= total && (stage == "validate" || stage == "test")) {
        std::fprintf(stderr, "\n");
        line_open_ = false;
      }
    } else {
      const int decile = static_cast<int>(frac * 10);
      if (decile != last_decile_) {
        last_decile_ = decile;
        std::fprintf(stderr, "%s: %zu/%zu (%.0f%%)\n", stage.c_str(), done, total, 100 * frac);
      }
    }
    std::fflush(stderr);
  }

 private:
  const bool tty_;
  std::string stage_;
  bool line_open_ = false;  // a bar is on the terminal's current line
  std::chrono::steady_clock::time_point stage_start_;
  size_t first_done_ = 0;
  int last_decile_ = -1;
};

}  // namespace qs::server

#endif  // QS_SERVER_PROGRESS_H_

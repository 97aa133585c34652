"""Shared entry point of the end-to-end test scripts: `--qsearch PATH` names the binary."""
import argparse
import os
import sys
import unittest


def main(module):
    """Sets module.QSEARCH from --qsearch and runs the module's tests; other args go to unittest."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--qsearch", default="build/qsearch")
    args, rest = parser.parse_known_args()
    module.QSEARCH = os.path.abspath(args.qsearch)
    unittest.main(module=module, argv=[sys.argv[0]] + rest, verbosity=2)

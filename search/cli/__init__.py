"""What every command shares: the flags and their mapping onto the config, one-line errors with
exit code 2, and the --workers process entry point (python -m search.cli._worker)."""
from __future__ import annotations

from search.cli._cli import (Parser, add_int8_flags, add_study_flags, folder_arg, int8_settings, number, open_study, path_arg,
                            resolve, run_cli, study_parser)

__all__ = ["Parser", "add_int8_flags", "add_study_flags", "folder_arg", "int8_settings", "number", "open_study", "path_arg", "resolve",
           "run_cli", "study_parser"]

"""What a study is asked to do: the config schema (YAML -> flags -> one frozen StudyConfig), the
name -> implementation tables, the search's UsageError, environment flags and fault injection."""
from __future__ import annotations

from search.config._config import (OPTIONS_NAME, RESOLVED_NAME, StudyConfig, build_config, config_fields,
                                   config_from_plain, fingerprint, first_difference, load_config)
from search.config._environment import env_flag, quiet_libraries
from search.config._errors import ConfigError, UsageError
from search.config._options import RunOptions, option_fields, options_from_plain, redact
from search.config._faults import ENV, fault
from search.config._tables import COMPOSED_SAMPLERS, LATENCY_BACKENDS, OBJECTIVES, SAMPLER_CHOICES, SAMPLERS

__all__ = ["ConfigError", "ENV", "LATENCY_BACKENDS", "OBJECTIVES", "OPTIONS_NAME", "RESOLVED_NAME", "RunOptions",
           "SAMPLERS", "SAMPLER_CHOICES", "COMPOSED_SAMPLERS", "StudyConfig", "UsageError", "build_config", "config_fields",
           "config_from_plain", "env_flag", "fault", "fingerprint", "first_difference", "load_config", "option_fields",
           "options_from_plain", "quiet_libraries", "redact"]

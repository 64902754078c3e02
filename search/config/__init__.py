"""What a study is asked to do: the config schema (YAML -> flags -> one frozen StudyConfig), the
name -> implementation tables and the samplers, the search's UsageError, environment flags and fault injection."""
from __future__ import annotations

from search.config._config import (OPTIONS_NAME, RESOLVED_NAME, SearchSpace, StudyConfig, build_config, config_fields,
                                   config_from_plain, fingerprint, first_difference, load_config)
from search.config._environment import env_flag, quiet_libraries
from search.config._errors import ConfigError, UsageError
from search.config._options import RunOptions, option_fields, options_from_plain, redact
from search.config._faults import ENV, fault
from search.config._samplers import (COMPOSED_SAMPLERS, LEVEL, SAMPLER_CHOICES, SAMPLERS, AimedSpread, LevelSpread,
                                     make_sampler, van_der_corput)
from search.config._tables import LATENCY_BACKENDS, OBJECTIVES

__all__ = ["AimedSpread", "ConfigError", "LEVEL", "LevelSpread", "make_sampler", "van_der_corput", "ENV", "LATENCY_BACKENDS", "OBJECTIVES", "OPTIONS_NAME", "RESOLVED_NAME", "RunOptions",
           "SAMPLERS", "SAMPLER_CHOICES", "COMPOSED_SAMPLERS", "SearchSpace", "StudyConfig", "UsageError", "build_config", "config_fields",
           "config_from_plain", "env_flag", "fault", "fingerprint", "first_difference", "load_config", "option_fields",
           "options_from_plain", "quiet_libraries", "redact"]

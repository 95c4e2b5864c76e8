"""Which processor runs a job, and where that choice comes from.

:class:`JobProcessorConfig` is the value object (``v1``, ``v2``, ``v2:8``, ``v2:affinity``,
``v2:8:affinity``). A job's config is resolved by :func:`resolve_processor`, first match wins:

1. the statement itself (``WITH (processor = 'v2:4')``, ``enable_affinity``, or the Velostream
   annotations ``-- @job_mode: adaptive`` / ``-- @num_partitions: 4``), see :func:`processor_from_statement`;
2. ``velosql run --processor``;
3. the ``PROCESSOR_CONFIG`` environment variable;
4. the YAML config file (``processor.architecture``), see :func:`load_settings`;
5. :attr:`JobProcessorConfig.V1`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from .errors import ConfigError, InvalidPartitionCountError, UnknownProcessorError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "PROCESSOR_ENV",
    "JobProcessorConfig",
    "Settings",
    "load_settings",
    "processor_from_statement",
    "resolve_processor",
    "usable_cpus",
]

PROCESSOR_ENV = "PROCESSOR_CONFIG"
CONFIG_ENV = "VELOSQL_CONFIG"
CONFIG_FILE = "velosql.yaml"

_EXPECTED = "expected v1, v2, v2:N, v2:affinity, v2:N:affinity"
# Velostream's job modes: "simple" and "transactional" run on one thread, "adaptive" is partitioned.
_V1_NAMES = ("v1", "simple", "transactional")
_V2_NAMES = ("v2", "adaptive")
# ASCII digits only: str.isdigit() would accept other scripts' digits that int() then reads.
_COUNT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def usable_cpus() -> int:
    """The number of CPUs this process may run on (at least 1).

    Uses the process's CPU affinity mask where the platform has one, so that a container or
    ``taskset`` limit is respected; otherwise ``os.cpu_count()``.
    """
    try:
        import psutil  # here: importing it costs more than a short job's planning

        count = len(psutil.Process().cpu_affinity())
    except (AttributeError, NotImplementedError, OSError, psutil.Error):
        # macOS has no cpu_affinity; some sandboxes refuse the call.
        count = os.cpu_count() or 1
    return max(1, count)


def _partition_count(text: str) -> int:
    """``text`` as a partition count; InvalidPartitionCountError unless it is an integer ≥ 1."""
    if not _COUNT.fullmatch(text) or int(text) < 1:
        raise InvalidPartitionCountError(f"Invalid partition count: {text}")
    return int(text)


@dataclass(frozen=True, kw_only=True)
class JobProcessorConfig:
    """Which processor runs a job: V1 (one thread, one partition) or V2 (N partitions).

    Build one with :attr:`V1`, :meth:`V2` or :meth:`parse`; ``str(cfg)`` is the canonical string and
    ``JobProcessorConfig.parse(str(cfg)) == cfg``. Instances are immutable, hashable and compare by
    value.

    Attributes:
        architecture: ``"v1"`` or ``"v2"``.
        num_partitions: V2's partition count; ``None`` means one per usable CPU (see
            :func:`usable_cpus`). Always ``None`` for V1.
        enable_core_affinity: Pin each V2 partition worker to its own core. Always ``False`` for V1.
    """

    architecture: str
    num_partitions: int | None = None
    enable_core_affinity: bool = False

    V1: ClassVar[JobProcessorConfig]  # assigned below the class: it is an instance of the class

    def __post_init__(self) -> None:
        if self.architecture not in ("v1", "v2"):
            raise UnknownProcessorError(
                f"Unknown processor architecture: {self.architecture!r} ({_EXPECTED})"
            )
        if self.num_partitions is not None and (
            isinstance(self.num_partitions, bool)
            or not isinstance(self.num_partitions, int)
            or self.num_partitions < 1
        ):
            raise InvalidPartitionCountError(f"Invalid partition count: {self.num_partitions}")
        if self.architecture == "v1" and (self.num_partitions is not None or self.enable_core_affinity):
            raise ConfigError("V1 has one partition and no core affinity; use V2 for either")

    @classmethod
    def V2(cls, num_partitions: int | None = None, enable_core_affinity: bool = False) -> JobProcessorConfig:
        """A V2 (partitioned) config.

        Args:
            num_partitions: Partition count (≥ 1), or ``None`` for one per usable CPU.
            enable_core_affinity: Pin each partition worker to its own core.

        Raises:
            InvalidPartitionCountError: ``num_partitions`` is not a positive integer.
        """
        return cls(
            architecture="v2", num_partitions=num_partitions, enable_core_affinity=enable_core_affinity
        )

    @classmethod
    def parse(cls, text: str) -> JobProcessorConfig:
        """Parse a processor string, case-insensitively and ignoring surrounding whitespace.

        Accepts ``v1``, ``v2``, ``v2:N``, ``v2:affinity``, ``v2:N:affinity``; Velostream's names
        ``simple`` and ``transactional`` for ``v1`` and ``adaptive`` for ``v2`` (with the same suffixes).

        Raises:
            UnknownProcessorError: The architecture or a parameter is unknown, or there are too many parts.
            InvalidPartitionCountError: ``N`` is not an integer ≥ 1.
        """
        text = str(text).strip()
        head, *params = [part.strip() for part in text.split(":")]
        name = head.lower()
        if name in _V1_NAMES:
            if params:
                raise UnknownProcessorError(f"Unknown V1 parameter: {params[0]}")
            return cls.V1
        if name not in _V2_NAMES:
            raise UnknownProcessorError(f"Unknown processor architecture: {head!r} ({_EXPECTED})")
        if len(params) > 2:
            raise UnknownProcessorError(f"Too many parts in processor string {text!r} ({_EXPECTED})")
        # Order is fixed (count, then affinity) so that every config has exactly one spelling.
        num_partitions, rest = None, params
        if rest and _COUNT.fullmatch(rest[0]):
            num_partitions, rest = _partition_count(rest[0]), rest[1:]
        affinity = bool(rest) and rest[0].lower() == "affinity"
        if affinity:
            rest = rest[1:]
        if rest:
            raise UnknownProcessorError(f"Unknown V2 parameter: {rest[0] or repr(rest[0])}")
        return cls.V2(num_partitions, affinity)

    def __str__(self) -> str:
        parts = [self.architecture]
        if self.num_partitions is not None:
            parts.append(str(self.num_partitions))
        if self.enable_core_affinity:
            parts.append("affinity")
        return ":".join(parts)

    def effective_partitions(self) -> int:
        """The partition count a job will use: 1 for V1; N, or :func:`usable_cpus` when unset, for V2."""
        if self.architecture == "v1":
            return 1
        return self.num_partitions if self.num_partitions is not None else usable_cpus()

    def description(self) -> str:
        """A one-line human description, e.g. ``"V2 (Multi-partition: 8, 8x baseline expected)"``."""
        if self.architecture == "v1":
            return "V1 (Single-threaded, single partition, 1x baseline)"
        n = self.effective_partitions()
        affinity = " with core affinity" if self.enable_core_affinity else ""
        return f"V2 (Multi-partition: {n}{affinity}, {n}x baseline expected)"


JobProcessorConfig.V1 = JobProcessorConfig(architecture="v1")


def _parse_at(text: object, where: str) -> JobProcessorConfig:
    """:meth:`JobProcessorConfig.parse`, with ``where`` (the string's origin) prefixed to errors."""
    try:
        return JobProcessorConfig.parse(str(text))
    except ConfigError as exc:
        # Same class, so callers can still tell an unknown name from a bad partition count.
        raise type(exc)(f"{where}: {exc}") from None


def _parse_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


# ---- statement ---------------------------------------------------------------------------------


def _annotation(annotations: Mapping[str, str], name: str) -> str | None:
    """The value of ``-- @name: value``, keys compared without ``@`` and case; trailing ``# …`` dropped.

    Velostream's templates document annotations inline (``-- @job_mode: adaptive  # Options: …``).
    """
    for key, value in annotations.items():
        if str(key).lstrip("@").strip().lower() == name:
            return str(value).split("#", 1)[0].strip()
    return None


def processor_from_statement(
    properties: Mapping[str, object], annotations: Mapping[str, str]
) -> JobProcessorConfig | None:
    """The processor a streaming statement asks for, or None when it names none.

    WITH properties win over annotations:

    * ``processor``: a processor string (see :meth:`JobProcessorConfig.parse`);
    * ``enable_affinity``: true turns core affinity on; without ``processor`` it means
      ``v2:affinity`` (keeping an ``@num_partitions`` annotation's count); false changes nothing;
    * ``-- @job_mode: v1|v2|simple|adaptive|transactional`` (a full processor string is also accepted);
    * ``-- @num_partitions: N``: the V2 partition count; alone it means ``v2:N``. As in Velostream it
      is ignored under a single-threaded job mode, and a count in ``@job_mode`` itself takes precedence.

    Args:
        properties: The statement's WITH properties, keys lower-cased.
        annotations: The statement's ``-- @name: value`` comments, keys with or without ``@``.

    Raises:
        ConfigError: A value is invalid; the message names the property or annotation.
    """
    cfg = _from_annotations(annotations)
    if properties.get("processor") is not None:
        cfg = _parse_at(properties["processor"], "WITH processor")
        with_v1 = cfg.architecture == "v1"
    else:
        with_v1 = False
    if properties.get("enable_affinity") is not None and _parse_bool(
        properties["enable_affinity"], "WITH enable_affinity"
    ):
        if with_v1:
            raise ConfigError(
                f"WITH enable_affinity: core affinity needs a V2 processor, but processor is {cfg}"
            )
        partitions = cfg.num_partitions if cfg is not None else None
        cfg = JobProcessorConfig.V2(partitions, enable_core_affinity=True)
    return cfg


def _from_annotations(annotations: Mapping[str, str]) -> JobProcessorConfig | None:
    mode = _annotation(annotations, "job_mode")
    count = _annotation(annotations, "num_partitions")
    cfg = _parse_at(mode, "@job_mode") if mode is not None else None
    if count is None or (cfg is not None and cfg.architecture == "v1"):
        return cfg
    try:
        n = _partition_count(count)
    except InvalidPartitionCountError as exc:
        raise InvalidPartitionCountError(f"@num_partitions: {exc}") from None
    if cfg is None:
        return JobProcessorConfig.V2(n)
    return cfg if cfg.num_partitions is not None else replace(cfg, num_partitions=n)


# ---- YAML settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The ``processor:`` section of a velosql YAML config file.

    Attributes:
        processor: ``processor.architecture`` parsed, or None when the file does not set it.
        backpressure_enabled: Whether V2 partition queues are bounded (the router waits when full).
        queue_threshold: Records a V2 partition queue holds before the router waits.
        partitioning_strategy: How V2 routes the records of jobs that do not choose (``hash``,
            ``sticky``, ``smart``, ``round_robin``, ``fan_in`` and their long forms), or None.
    """

    processor: JobProcessorConfig | None = None
    backpressure_enabled: bool = True
    queue_threshold: int = 1000
    partitioning_strategy: str | None = None


_SETTINGS_KEYS = ("architecture", "backpressure_enabled", "queue_threshold", "partitioning_strategy")


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read a YAML config file of the form::

        processor:
          architecture: v2:4        # any string JobProcessorConfig.parse accepts
          backpressure_enabled: true
          queue_threshold: 1000
          partitioning_strategy: hash   # for jobs whose statement does not choose

    Every key is optional. Other top-level sections are left to their own readers.

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or ``processor`` holds an
            unknown key or a bad value; the message names the file and the key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    import yaml  # only when there is a config file

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if doc is None:
        return Settings()
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    section = doc.get("processor")
    if section is None:
        return Settings()
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: processor: expected a mapping with keys {', '.join(_SETTINGS_KEYS)}")
    for key in section:
        if key not in _SETTINGS_KEYS:
            raise ConfigError(f"{path}: processor.{key}: unknown key (allowed: {', '.join(_SETTINGS_KEYS)})")

    settings = Settings()
    arch = section.get("architecture")
    if arch is not None:
        if not isinstance(arch, str):
            raise ConfigError(f"{path}: processor.architecture: expected a string, got {arch!r}")
        settings = replace(settings, processor=_parse_at(arch, f"{path}: processor.architecture"))
    if section.get("backpressure_enabled") is not None:
        enabled = _parse_bool(section["backpressure_enabled"], f"{path}: processor.backpressure_enabled")
        settings = replace(settings, backpressure_enabled=enabled)
    threshold = section.get("queue_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigError(
                f"{path}: processor.queue_threshold: expected a positive integer, got {threshold!r}"
            )
        settings = replace(settings, queue_threshold=threshold)
    strategy = section.get("partitioning_strategy")
    if strategy is not None:
        from .options import PARTITIONING_STRATEGIES

        if not isinstance(strategy, str) or strategy.lower() not in PARTITIONING_STRATEGIES:
            raise ConfigError(
                f"{path}: processor.partitioning_strategy: expected one of "
                f"{', '.join(PARTITIONING_STRATEGIES)}, got {strategy!r}"
            )
        settings = replace(settings, partitioning_strategy=strategy.lower())
    return settings


def configured_settings(config_path: str | os.PathLike[str] | None = None) -> Settings:
    """The settings of the config file in effect (see :func:`resolve_processor`), or the defaults."""
    path = _config_file(config_path, os.environ)
    return load_settings(path) if path is not None else Settings()


def _config_file(config_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The YAML file to read: the given path, else ``$VELOSQL_CONFIG``, else ``./velosql.yaml`` if present."""
    if config_path is not None:
        return Path(config_path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path.cwd() / CONFIG_FILE
    return default if default.is_file() else None


def resolve_processor(
    statement_cfg: JobProcessorConfig | None,
    cli: str | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> JobProcessorConfig:
    """The processor a job runs on; the first of these that is set wins.

    1. ``statement_cfg`` (from :func:`processor_from_statement`);
    2. ``cli``, the ``velosql run --processor`` string;
    3. ``env["PROCESSOR_CONFIG"]`` (blank counts as unset);
    4. ``processor.architecture`` in the YAML file at ``config_path``, or when that is None at
       ``$VELOSQL_CONFIG``, or else at ``./velosql.yaml`` if it exists;
    5. :attr:`JobProcessorConfig.V1`.

    Args:
        env: Environment variables; ``os.environ`` when None.

    Raises:
        ConfigError: A string is invalid (the message starts with where it came from, e.g.
            ``PROCESSOR_CONFIG: Unknown V2 parameter: x``) or the config file is bad.
    """
    if statement_cfg is not None:
        return statement_cfg
    if cli is not None:
        return _parse_at(cli, "--processor")
    env = os.environ if env is None else env
    if env.get(PROCESSOR_ENV, "").strip():
        return _parse_at(env[PROCESSOR_ENV], PROCESSOR_ENV)
    path = _config_file(config_path, env)
    if path is not None:
        settings = load_settings(path)
        if settings.processor is not None:
            return settings.processor
    return JobProcessorConfig.V1

"""Processor configs: parsing, descriptions, YAML settings, precedence, and the processor factory."""

from __future__ import annotations

import sys
import types

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from velosql import config
from velosql.config import (
    JobProcessorConfig,
    Settings,
    load_settings,
    processor_from_statement,
    resolve_processor,
    usable_cpus,
)
from velosql.errors import ConfigError, InvalidPartitionCountError, UnknownProcessorError
from velosql.runtime.processor import JobProcessor, JobProcessorFactory, V1Processor, V2Processor

V1 = JobProcessorConfig.V1
V2 = JobProcessorConfig.V2
EXPECTED = "(expected v1, v2, v2:N, v2:affinity, v2:N:affinity)"


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on 6 CPUs."""
    monkeypatch.setattr(config, "usable_cpus", lambda: 6)
    return 6


# ---- the value object -----------------------------------------------------------------------------


def test_constructors():
    assert (V1.architecture, V1.num_partitions, V1.enable_core_affinity) == ("v1", None, False)
    cfg = V2(8, enable_core_affinity=True)
    assert (cfg.architecture, cfg.num_partitions, cfg.enable_core_affinity) == ("v2", 8, True)
    assert V2() == JobProcessorConfig(architecture="v2")
    assert JobProcessorConfig.V1 is V1


def test_value_semantics():
    assert V2(4) == V2(4) and hash(V2(4)) == hash(V2(4))
    assert V2(4) != V2(4, True) != V2(None, True)
    assert V1 != V2(1)
    assert len({V1, V2(), V2(), V2(3), V2(3, True)}) == 4
    with pytest.raises(AttributeError):
        V2(4).num_partitions = 5


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"architecture": "v3"}, UnknownProcessorError, f"Unknown processor architecture: 'v3' {EXPECTED}"),
        (
            {"architecture": "v2", "num_partitions": 0},
            InvalidPartitionCountError,
            "Invalid partition count: 0",
        ),
        (
            {"architecture": "v2", "num_partitions": -2},
            InvalidPartitionCountError,
            "Invalid partition count: -2",
        ),
        (
            {"architecture": "v2", "num_partitions": True},
            InvalidPartitionCountError,
            "Invalid partition count: True",
        ),
        ({"architecture": "v1", "num_partitions": 2}, ConfigError, "V1 has one partition"),
        ({"architecture": "v1", "enable_core_affinity": True}, ConfigError, "V1 has one partition"),
    ],
)
def test_invalid_construction(kwargs, error, message):
    with pytest.raises(error) as info:
        JobProcessorConfig(**kwargs)
    assert str(info.value).startswith(message)


# ---- parse ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1", V1),
        ("V1", V1),
        ("  v1\n", V1),
        ("simple", V1),
        ("SIMPLE", V1),
        ("transactional", V1),
        ("Transactional", V1),
        ("v2", V2()),
        ("V2", V2()),
        ("\tv2 ", V2()),
        ("v2:8", V2(8)),
        ("v2:1", V2(1)),
        ("v2:512", V2(512)),
        ("v2:08", V2(8)),
        ("v2:affinity", V2(None, True)),
        ("V2:AFFINITY", V2(None, True)),
        ("v2:8:affinity", V2(8, True)),
        ("V2:8:Affinity", V2(8, True)),
        (" v2 : 8 : affinity ", V2(8, True)),
        ("adaptive", V2()),
        ("ADAPTIVE", V2()),
        ("adaptive:4", V2(4)),
        ("adaptive:affinity", V2(None, True)),
        ("adaptive:4:affinity", V2(4, True)),
        ("Adaptive:16:AFFINITY", V2(16, True)),
    ],
)
def test_parse(text, expected):
    assert JobProcessorConfig.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("v3", UnknownProcessorError, f"Unknown processor architecture: 'v3' {EXPECTED}"),
        ("", UnknownProcessorError, f"Unknown processor architecture: '' {EXPECTED}"),
        ("   ", UnknownProcessorError, f"Unknown processor architecture: '' {EXPECTED}"),
        (":4", UnknownProcessorError, f"Unknown processor architecture: '' {EXPECTED}"),
        ("fast:4", UnknownProcessorError, f"Unknown processor architecture: 'fast' {EXPECTED}"),
        ("v2:x", UnknownProcessorError, "Unknown V2 parameter: x"),
        ("v2:X", UnknownProcessorError, "Unknown V2 parameter: X"),
        ("v2:4:x", UnknownProcessorError, "Unknown V2 parameter: x"),
        ("v2:4:4", UnknownProcessorError, "Unknown V2 parameter: 4"),
        ("v2:affinity:4", UnknownProcessorError, "Unknown V2 parameter: 4"),
        ("v2:affinity:affinity", UnknownProcessorError, "Unknown V2 parameter: affinity"),
        ("v2:4.5", UnknownProcessorError, "Unknown V2 parameter: 4.5"),
        ("v2:", UnknownProcessorError, "Unknown V2 parameter: ''"),
        ("adaptive:x", UnknownProcessorError, "Unknown V2 parameter: x"),
        ("v2:0", InvalidPartitionCountError, "Invalid partition count: 0"),
        ("v2:-1", InvalidPartitionCountError, "Invalid partition count: -1"),
        ("v2:0:affinity", InvalidPartitionCountError, "Invalid partition count: 0"),
        ("adaptive:0", InvalidPartitionCountError, "Invalid partition count: 0"),
        ("v1:4", UnknownProcessorError, "Unknown V1 parameter: 4"),
        ("v1:affinity", UnknownProcessorError, "Unknown V1 parameter: affinity"),
        ("simple:4", UnknownProcessorError, "Unknown V1 parameter: 4"),
        (
            "v2:4:affinity:x",
            UnknownProcessorError,
            f"Too many parts in processor string 'v2:4:affinity:x' {EXPECTED}",
        ),
    ],
)
def test_parse_errors(text, error, message):
    with pytest.raises(error) as info:
        JobProcessorConfig.parse(text)
    assert str(info.value) == message


def test_bad_count_is_both_error_kinds():
    # Callers may catch the specific class, the config family, or any ValueError.
    with pytest.raises(InvalidPartitionCountError) as info:
        JobProcessorConfig.parse("v2:0")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert not isinstance(info.value, UnknownProcessorError)


@pytest.mark.parametrize(
    ("cfg", "text"),
    [
        (V1, "v1"),
        (V2(), "v2"),
        (V2(8), "v2:8"),
        (V2(None, True), "v2:affinity"),
        (V2(8, True), "v2:8:affinity"),
    ],
)
def test_str_is_canonical(cfg, text):
    assert str(cfg) == text
    assert JobProcessorConfig.parse(text) == cfg


configs = st.one_of(
    st.just(V1),
    st.builds(V2, st.one_of(st.none(), st.integers(1, 512)), st.booleans()),
)


@given(configs)
def test_round_trip(cfg):
    assert JobProcessorConfig.parse(str(cfg)) == cfg
    assert JobProcessorConfig.parse(f"  {str(cfg).upper()} ") == cfg


# ---- descriptions and CPU count -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "text"),
    [
        (V1, "V1 (Single-threaded, single partition, 1x baseline)"),
        (V2(8), "V2 (Multi-partition: 8, 8x baseline expected)"),
        (V2(8, True), "V2 (Multi-partition: 8 with core affinity, 8x baseline expected)"),
        (V2(1), "V2 (Multi-partition: 1, 1x baseline expected)"),
        (V2(), "V2 (Multi-partition: 6, 6x baseline expected)"),
        (V2(None, True), "V2 (Multi-partition: 6 with core affinity, 6x baseline expected)"),
    ],
)
def test_description(cpus, cfg, text):
    assert cfg.description() == text


def test_effective_partitions(cpus):
    assert V1.effective_partitions() == 1
    assert V2(3).effective_partitions() == 3
    assert V2().effective_partitions() == cpus


def test_usable_cpus_uses_affinity_mask(monkeypatch):
    class Process:
        def cpu_affinity(self):
            return [0, 2, 5]

    monkeypatch.setattr(psutil, "Process", Process)
    assert usable_cpus() == 3


def test_usable_cpus_falls_back_to_cpu_count(monkeypatch):
    class Process:  # like psutil on macOS: no cpu_affinity at all
        pass

    monkeypatch.setattr(psutil, "Process", Process)
    monkeypatch.setattr(config.os, "cpu_count", lambda: 12)
    assert usable_cpus() == 12
    monkeypatch.setattr(config.os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


def test_usable_cpus_real():
    assert usable_cpus() >= 1


# ---- processors -----------------------------------------------------------------------------------


def test_factory_v1():
    proc = JobProcessorFactory.create_v1()
    assert isinstance(proc, V1Processor) and isinstance(proc, JobProcessor)
    assert proc.processor_name() == "V1 Single-threaded Processor"
    assert proc.processor_version() == "V1"
    assert proc.num_partitions() == 1
    assert proc.config == V1
    assert proc.description() == V1.description()


def test_factory_v2_default(cpus):
    proc = JobProcessorFactory.create_v2_default()
    assert isinstance(proc, V2Processor)
    assert proc.processor_name() == "V2 Partitioned Processor"
    assert proc.processor_version() == "V2"
    assert proc.num_partitions() == cpus
    assert proc.config == V2()
    assert proc.enable_core_affinity() is False
    assert proc.description() == "V2 (Multi-partition: 6, 6x baseline expected)"


def test_factory_v2_with_partitions():
    proc = JobProcessorFactory.create_v2_with_partitions(4)
    assert proc.num_partitions() == 4
    assert proc.config == V2(4)


@pytest.mark.parametrize("n", [0, -1, True, 2.0, "4"])
def test_factory_v2_rejects_bad_counts(n):
    with pytest.raises(InvalidPartitionCountError, match="Invalid partition count"):
        JobProcessorFactory.create_v2_with_partitions(n)


@pytest.mark.parametrize(
    ("text", "cls", "version", "partitions", "affinity"),
    [
        ("v1", V1Processor, "V1", 1, None),
        ("simple", V1Processor, "V1", 1, None),
        ("v2:8:affinity", V2Processor, "V2", 8, True),
        ("adaptive:3", V2Processor, "V2", 3, False),
        ("v2", V2Processor, "V2", 6, False),
    ],
)
def test_create_from_str(cpus, text, cls, version, partitions, affinity):
    proc = JobProcessorFactory.create_from_str(text)
    assert type(proc) is cls
    assert proc.processor_version() == version
    assert proc.num_partitions() == partitions
    assert proc.config == JobProcessorConfig.parse(text)
    if affinity is not None:
        assert proc.enable_core_affinity() is affinity


def test_create_from_str_error():
    with pytest.raises(UnknownProcessorError, match="Unknown V2 parameter: x"):
        JobProcessorFactory.create_from_str("v2:x")


def test_create_dispatches_on_architecture():
    assert type(JobProcessorFactory.create(V1)) is V1Processor
    assert type(JobProcessorFactory.create(V2(2, True))) is V2Processor


def test_processor_rejects_other_architecture():
    with pytest.raises(ConfigError):
        V1Processor(V2(2))
    with pytest.raises(ConfigError):
        V2Processor(V1)


def test_partition_count_fixed_at_construction(monkeypatch):
    monkeypatch.setattr(config, "usable_cpus", lambda: 4)
    proc = JobProcessorFactory.create_v2_default()
    monkeypatch.setattr(config, "usable_cpus", lambda: 2)
    assert proc.num_partitions() == 4


def test_job_processor_is_abstract():
    with pytest.raises(TypeError):
        JobProcessor(V1)


@pytest.mark.parametrize("text", ["v1", "v2:2:affinity"])
def test_run_delegates_to_v1_engine(monkeypatch, text):
    calls = []
    engine = types.ModuleType("velosql.runtime.v1")
    engine.run_job = lambda processor, job: calls.append((processor, job)) or "result"
    monkeypatch.setitem(sys.modules, "velosql.runtime.v1", engine)
    proc = JobProcessorFactory.create_from_str(text)
    assert proc.run("job") == "result"
    assert calls == [(proc, "job")]


# ---- statements -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "annotations", "expected"),
    [
        ({}, {}, None),
        ({"other": 1}, {"sla.latency.p99": "25ms"}, None),
        ({"processor": "v2:4"}, {}, V2(4)),
        ({"processor": "V1"}, {}, V1),
        ({"processor": "v2"}, {"job_mode": "v1"}, V2()),
        ({"processor": "v1"}, {"job_mode": "adaptive", "num_partitions": "8"}, V1),
        ({"enable_affinity": True}, {}, V2(None, True)),
        ({"enable_affinity": "true"}, {}, V2(None, True)),
        ({"enable_affinity": "TRUE"}, {}, V2(None, True)),
        ({"enable_affinity": False}, {}, None),
        ({"enable_affinity": "false"}, {"job_mode": "v2"}, V2()),
        ({"processor": "v2:4", "enable_affinity": True}, {}, V2(4, True)),
        ({"processor": "v2:4:affinity", "enable_affinity": "false"}, {}, V2(4, True)),
        ({"enable_affinity": True}, {"num_partitions": "4"}, V2(4, True)),
        ({"enable_affinity": True}, {"job_mode": "simple"}, V2(None, True)),
        ({}, {"job_mode": "v2"}, V2()),
        ({}, {"job_mode": "V1"}, V1),
        ({}, {"job_mode": "simple"}, V1),
        ({}, {"job_mode": "transactional"}, V1),
        ({}, {"job_mode": "adaptive"}, V2()),
        ({}, {"@job_mode": "adaptive"}, V2()),
        ({}, {"job_mode": "adaptive  # Options: simple, transactional, adaptive"}, V2()),
        ({}, {"job_mode": "v2", "num_partitions": "4"}, V2(4)),
        ({}, {"job_mode": "adaptive", "num_partitions": "8  # CPU cores"}, V2(8)),
        ({}, {"num_partitions": "4"}, V2(4)),
        ({}, {"@num_partitions": " 4 "}, V2(4)),
        ({}, {"job_mode": "v2:2", "num_partitions": "4"}, V2(2)),
        ({}, {"job_mode": "v2:affinity", "num_partitions": "4"}, V2(4, True)),
        # Velostream's own templates pair simple mode with a count it then ignores.
        ({}, {"job_mode": "simple", "num_partitions": "4"}, V1),
    ],
)
def test_processor_from_statement(properties, annotations, expected):
    assert processor_from_statement(properties, annotations) == expected


@pytest.mark.parametrize(
    ("properties", "annotations", "error", "message"),
    [
        ({"processor": "v2:x"}, {}, UnknownProcessorError, "WITH processor: Unknown V2 parameter: x"),
        ({"processor": "v2:0"}, {}, InvalidPartitionCountError, "WITH processor: Invalid partition count: 0"),
        (
            {"enable_affinity": "maybe"},
            {},
            ConfigError,
            "WITH enable_affinity: expected true or false, got 'maybe'",
        ),
        (
            {"processor": "v1", "enable_affinity": True},
            {},
            ConfigError,
            "WITH enable_affinity: core affinity needs a V2 processor, but processor is v1",
        ),
        (
            {},
            {"job_mode": "turbo"},
            UnknownProcessorError,
            f"@job_mode: Unknown processor architecture: 'turbo' {EXPECTED}",
        ),
        (
            {},
            {"num_partitions": "0"},
            InvalidPartitionCountError,
            "@num_partitions: Invalid partition count: 0",
        ),
        (
            {},
            {"num_partitions": "many"},
            InvalidPartitionCountError,
            "@num_partitions: Invalid partition count: many",
        ),
    ],
)
def test_processor_from_statement_errors(properties, annotations, error, message):
    with pytest.raises(error) as info:
        processor_from_statement(properties, annotations)
    assert str(info.value) == message


# ---- YAML settings --------------------------------------------------------------------------------


def write(tmp_path, text, name="velosql.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_settings_full(tmp_path):
    path = write(
        tmp_path,
        "processor:\n"
        "  architecture: v2:4  # partitioned\n"
        "  backpressure_enabled: false\n"
        "  queue_threshold: 50\n",
    )
    assert load_settings(path) == Settings(V2(4), backpressure_enabled=False, queue_threshold=50)
    assert load_settings(str(path)) == load_settings(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Settings()),
        ("# nothing here\n", Settings()),
        ("server:\n  port: 8080\n", Settings()),
        ("processor:\n", Settings()),
        ("processor:\n  architecture: ADAPTIVE:2:affinity\n", Settings(V2(2, True))),
        ("processor:\n  architecture: v1\n", Settings(V1)),
        ("processor:\n  queue_threshold: 5\n", Settings(None, True, 5)),
        ("processor:\n  backpressure_enabled: 'off'\n", Settings(None, False)),
    ],
)
def test_load_settings_partial(tmp_path, text, expected):
    assert load_settings(write(tmp_path, text)) == expected


def test_settings_defaults():
    assert Settings() == Settings(processor=None, backpressure_enabled=True, queue_threshold=1000)


def test_load_settings_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: config file not found"


def test_load_settings_bad_yaml(tmp_path):
    path = write(tmp_path, "processor: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: invalid YAML: ")


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (
            "processor:\n  architecure: v2\n",
            ConfigError,
            "processor.architecure: unknown key "
            "(allowed: architecture, backpressure_enabled, queue_threshold, partitioning_strategy)",
        ),
        (
            "processor:\n  architecture: v3\n",
            UnknownProcessorError,
            "processor.architecture: Unknown processor architecture: 'v3'",
        ),
        (
            "processor:\n  architecture: v2:x\n",
            UnknownProcessorError,
            "processor.architecture: Unknown V2 parameter: x",
        ),
        (
            "processor:\n  architecture: v2:0\n",
            InvalidPartitionCountError,
            "processor.architecture: Invalid partition count: 0",
        ),
        ("processor:\n  architecture: 2\n", ConfigError, "processor.architecture: expected a string, got 2"),
        (
            "processor:\n  queue_threshold: 0\n",
            ConfigError,
            "processor.queue_threshold: expected a positive integer, got 0",
        ),
        (
            "processor:\n  queue_threshold: many\n",
            ConfigError,
            "processor.queue_threshold: expected a positive integer",
        ),
        (
            "processor:\n  queue_threshold: true\n",
            ConfigError,
            "processor.queue_threshold: expected a positive integer",
        ),
        (
            "processor:\n  backpressure_enabled: sometimes\n",
            ConfigError,
            "processor.backpressure_enabled: expected true or false",
        ),
        ("processor: v2\n", ConfigError, "processor: expected a mapping"),
        ("- v2\n", ConfigError, "expected a mapping at the top level, got list"),
    ],
)
def test_load_settings_bad_values(tmp_path, text, error, message):
    path = write(tmp_path, text)
    with pytest.raises(error) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: {message}")


# ---- precedence -----------------------------------------------------------------------------------


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """Every level set to a different config; a clean cwd so no stray velosql.yaml is found."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "processor:\n  architecture: v2:4\n", name="config.yaml")
    return {
        "statement": V2(1),
        "cli": "v2:2",
        "env": {"PROCESSOR_CONFIG": "v2:3"},
        "config_path": path,
    }


def test_precedence(layers):
    statement, cli, env, path = layers["statement"], layers["cli"], layers["env"], layers["config_path"]
    assert resolve_processor(statement, cli, env, path) == V2(1)
    assert resolve_processor(None, cli, env, path) == V2(2)
    assert resolve_processor(None, None, env, path) == V2(3)
    assert resolve_processor(None, None, {}, path) == V2(4)
    assert resolve_processor(None, None, {}) == V1


def test_statement_v1_beats_everything(layers):
    assert resolve_processor(V1, layers["cli"], layers["env"], layers["config_path"]) == V1


def test_env_defaults_to_os_environ(layers, monkeypatch):
    monkeypatch.setenv("PROCESSOR_CONFIG", "adaptive:7")
    assert resolve_processor(None) == V2(7)
    monkeypatch.delenv("PROCESSOR_CONFIG")
    monkeypatch.delenv("VELOSQL_CONFIG", raising=False)
    assert resolve_processor(None) == V1


def test_blank_env_counts_as_unset(layers):
    assert resolve_processor(None, env={"PROCESSOR_CONFIG": "  "}, config_path=layers["config_path"]) == V2(4)


def test_config_file_from_env_var(layers):
    env = {"VELOSQL_CONFIG": str(layers["config_path"])}
    assert resolve_processor(None, env=env) == V2(4)


def test_config_file_in_cwd(layers, tmp_path):
    write(tmp_path, "processor:\n  architecture: v2:5:affinity\n")
    assert resolve_processor(None, env={}) == V2(5, True)
    # An explicit path or $VELOSQL_CONFIG wins over ./velosql.yaml.
    assert resolve_processor(None, env={}, config_path=layers["config_path"]) == V2(4)
    assert resolve_processor(None, env={"VELOSQL_CONFIG": str(layers["config_path"])}) == V2(4)


def test_config_file_without_architecture_falls_back_to_v1(layers, tmp_path):
    path = write(tmp_path, "processor:\n  queue_threshold: 10\n", name="other.yaml")
    assert resolve_processor(None, env={}, config_path=path) == V1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cli": "v2:x"}, UnknownProcessorError, "--processor: Unknown V2 parameter: x"),
        ({"cli": ""}, UnknownProcessorError, f"--processor: Unknown processor architecture: '' {EXPECTED}"),
        (
            {"env": {"PROCESSOR_CONFIG": "v2:x"}},
            UnknownProcessorError,
            "PROCESSOR_CONFIG: Unknown V2 parameter: x",
        ),
        (
            {"env": {"PROCESSOR_CONFIG": "v2:0"}},
            InvalidPartitionCountError,
            "PROCESSOR_CONFIG: Invalid partition count: 0",
        ),
        (
            {"env": {"PROCESSOR_CONFIG": "v1:4"}},
            UnknownProcessorError,
            "PROCESSOR_CONFIG: Unknown V1 parameter: 4",
        ),
    ],
)
def test_resolve_errors_name_their_origin(layers, kwargs, error, message):
    with pytest.raises(error) as info:
        resolve_processor(None, **kwargs)
    assert str(info.value) == message


def test_resolve_error_in_config_file(layers, tmp_path):
    path = write(tmp_path, "processor:\n  architecture: v2:x\n", name="bad.yaml")
    with pytest.raises(UnknownProcessorError) as info:
        resolve_processor(None, env={}, config_path=path)
    assert str(info.value) == f"{path}: processor.architecture: Unknown V2 parameter: x"


def test_resolve_missing_config_from_env_var(layers, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_processor(None, env={"VELOSQL_CONFIG": str(missing)})


def test_higher_level_shadows_bad_lower_levels(layers, tmp_path):
    # Lower levels are not even read once a higher one decides.
    bad = write(tmp_path, "processor: [unclosed\n", name="bad.yaml")
    assert resolve_processor(None, cli="v1", env={"PROCESSOR_CONFIG": "v9"}, config_path=bad) == V1

"""The deployment files: what can be checked without Docker, balena or a Raspberry Pi.

- deploy/balena/docker-compose.yml: parsed (a small YAML subset reader, since PyYAML is not
  a dependency) and checked against what balena supports and what the services need;
- deploy/balena/Dockerfile.template: installs every package `dordt` imports, and its start
  command writes a broker configuration from a real gateway bundle;
- deploy/systemd/: `systemd-analyze verify` when the tool exists, required keys always;
- docs/gateway-operations.md: names only commands and broker options that exist.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BALENA = ROOT / "deploy" / "balena"
SYSTEMD = ROOT / "deploy" / "systemd"
DOC = ROOT / "docs" / "gateway-operations.md"

# docs.balena.io/reference/supervisor/docker-compose: the service fields balena supports
BALENA_SERVICE_FIELDS = {
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "cpu_shares", "cpu_quota",
    "cpuset", "devices", "depends_on", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "environment", "expose", "extra_hosts", "group_add", "healthcheck",
    "hostname", "image", "ipc", "labels", "mac_address", "mem_limit", "mem_reservation",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "ports", "privileged", "read_only", "restart", "security_opt", "shm_size",
    "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "userns_mode",
    "volumes", "working_dir",
}


# -- a reader for the YAML the compose file uses ----------------------------------------------


def read_yaml(text: str):
    """Block mappings, block sequences of scalars, folded scalars (>-), comments, quoted
    and plain scalars: enough for docker-compose.yml, and loud about anything else."""
    lines = []
    for raw in text.splitlines():
        line = _uncomment(raw).rstrip()
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
    value, end = _block(lines, 0, lines[0][0])
    assert end == len(lines), f"unparsed YAML from: {lines[end]}"
    return value


def _uncomment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def _value(text: str, lines, i, indent):
    """The scalar `text` (or the folded lines after it), and where reading goes on."""
    if text in (">-", ">"):
        folded = []
        while i < len(lines) and lines[i][0] > indent:
            folded.append(lines[i][1])
            i += 1
        return " ".join(folded), i
    if text[0] in "\"'":
        assert text[-1] == text[0], text
        return text[1:-1], i
    assert text[0] not in "[{&*!|>", f"unsupported YAML: {text}"
    return text, i


def _block(lines, i, indent):
    if lines[i][1].startswith("- "):
        items = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item, i = _value(lines[i][1][2:].strip(), lines, i + 1, indent)
            items.append(item)
        return items, i
    mapping = {}
    while i < len(lines) and lines[i][0] == indent:
        key, colon, rest = lines[i][1].partition(":")
        assert colon and key not in mapping, f"bad or repeated key: {lines[i][1]}"
        rest = rest.strip()
        i += 1
        if rest:
            mapping[key], i = _value(rest, lines, i, indent)
        elif i < len(lines) and lines[i][0] > indent:
            mapping[key], i = _block(lines, i, lines[i][0])
        else:
            mapping[key] = None
    return mapping, i


@pytest.fixture(scope="module")
def compose() -> dict:
    return read_yaml((BALENA / "docker-compose.yml").read_text())


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """{container path: (volume, mode)}."""
    out = {}
    for spec in service.get("volumes", []):
        volume, path, *mode = spec.split(":")
        out[path] = (volume, mode[0] if mode else "rw")
    return out


# -- balena ---------------------------------------------------------------------------------


def test_compose_file_is_balena_compose_2_4_with_named_volumes_only(compose):
    assert compose["version"] == "2.4"
    assert set(compose) == {"version", "services", "volumes"}
    assert set(compose["services"]) == {"gateway", "mosquitto"}
    declared = set(compose["volumes"])
    assert declared == {"gateway-data", "broker-config", "broker-data"}
    used = set()
    for name, service in compose["services"].items():
        assert set(service) <= BALENA_SERVICE_FIELDS, (name, set(service) - BALENA_SERVICE_FIELDS)
        assert service["restart"] == "always"
        assert service["network_mode"] == "host"
        for path, (volume, _) in mounts(service).items():
            assert not volume.startswith((".", "/", "~")), f"{name}: bind mount {volume}"
            assert path.startswith("/")
            used.add(volume)
    assert used == declared


def test_the_gateway_service_builds_the_template_and_owns_the_data_volume(compose):
    gw = compose["services"]["gateway"]
    assert gw["build"] == {"context": ".", "dockerfile": "deploy/balena/Dockerfile.template"}
    # the context is the top of the pushed copy of the repository
    assert (ROOT / gw["build"]["dockerfile"]).is_file()
    assert mounts(gw) == {"/data": ("gateway-data", "rw"), "/broker": ("broker-config", "rw")}
    assert gw["read_only"] == "true" and gw["tmpfs"] == ["/tmp"]
    assert gw["cap_drop"] == ["ALL"] and gw["cap_add"] == ["CHOWN"]


def test_the_broker_service_runs_the_configuration_the_gateway_writes(compose):
    mq = compose["services"]["mosquitto"]
    assert re.fullmatch(r"eclipse-mosquitto:2(\.\d+)*", mq["image"])
    assert mq["depends_on"] == ["gateway"]
    assert mounts(mq) == {"/broker": ("broker-config", "ro"),
                          "/mosquitto/data": ("broker-data", "rw")}
    assert mq["command"][:2] == ["sh", "-c"]
    script = mq["command"][2]
    assert "until [ -s /broker/mosquitto.conf ]" in script
    assert script.endswith("exec /usr/sbin/mosquitto -c /broker/mosquitto.conf")


def dockerfile_cmd() -> list[str]:
    text = (BALENA / "Dockerfile.template").read_text()
    (cmd,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    import json

    return json.loads(cmd[4:])


def test_the_image_installs_every_package_the_cli_imports():
    text = (BALENA / "Dockerfile.template").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11-slim-bookworm")
    copied = {line.split()[1].rstrip("/") for line in instructions if line.startswith("COPY ")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied | {
        w for line in instructions if line.startswith("COPY ") for w in line.split()[1:-1]}
    copied_files = {w for line in instructions if line.startswith("COPY ")
                    for w in line.split()[1:-1]}
    assert "setup.py" in copied_files  # the optional C decoder's build (gateway/_speedups.c)
    run = " ".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "pip install ." in run and "gcc" in run


def test_the_images_start_command_writes_the_broker_files_then_runs_the_gateway(
        compose, tmp_path):
    from fleet.ca import FleetCA

    cmd = dockerfile_cmd()
    assert cmd[:2] == ["sh", "-c"]
    render, run = cmd[2].split(" && exec ")
    assert run == "dordt gateway run --config /data/gateway.toml"
    argv = shlex.split(render)
    assert argv[:3] == ["python", "-m", "gateway.mosquitto"]
    args = dict(zip(argv[3::2], argv[4::2]))
    gw = mounts(compose["services"]["gateway"])
    mq = mounts(compose["services"]["mosquitto"])
    assert args["--ca-dir"] == "/data/ca" and "/data" in gw
    assert gw[args["--out"]][0] == mq[args["--out"]][0] == "broker-config"
    assert mq[args["--persistence"]][0] == "broker-data"
    assert args["--key-group"] == "1883"  # the eclipse-mosquitto image's mosquitto group
    # the same command on a real gateway bundle, with this machine's paths and group
    ca = FleetCA.init(tmp_path / "ca")
    ca.issue_gateway("lamp17", ["lamp17.local"])
    ca.export_gateway("lamp17", tmp_path / "data" / "ca")
    here = {"/data/ca": str(tmp_path / "data" / "ca"), "/broker": str(tmp_path / "b")}
    argv = [here.get(a, a) for a in argv]
    argv[argv.index("--key-group") + 1] = str(os.getgid())
    r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert f"cafile {tmp_path}/b/ca.crt" in conf
    assert "persistence_location /mosquitto/data/" in conf


# -- systemd --------------------------------------------------------------------------------


def unit_keys(path: Path) -> dict[str, list[str]]:
    """{"Section.Key": [values]} of a unit file."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_the_gateway_unit_has_the_keys_an_unattended_gateway_needs():
    keys = unit_keys(SYSTEMD / "dordt-gateway.service")
    expected = {
        "Service.Type": ["notify"], "Service.WatchdogSec": ["60"],
        "Service.Restart": ["always"], "Unit.StartLimitIntervalSec": ["0"],
        "Service.User": ["dordt"], "Service.StateDirectory": ["dordt-gateway"],
        "Service.NoNewPrivileges": ["yes"], "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"], "Service.PrivateTmp": ["yes"],
        "Service.CapabilityBoundingSet": [""], "Service.DevicePolicy": ["closed"],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, value in expected.items():
        assert keys.get(key) == value, key
    (exec_start,) = keys["Service.ExecStart"]
    assert exec_start.endswith("dordt gateway run --config /etc/dordt/gateway.toml")
    assert "mosquitto.service" in keys["Unit.After"][0]


def test_the_mosquitto_drop_in_writes_the_configuration_before_every_start():
    keys = unit_keys(SYSTEMD / "dordt-mosquitto.conf")
    assert keys["Service.ExecStart"] == ["", "/usr/sbin/mosquitto -c "
                                         "/etc/dordt/mosquitto/mosquitto.conf"]
    (pre,) = keys["Service.ExecStartPre"]
    argv = shlex.split(pre)
    assert argv[1:3] == ["-m", "gateway.mosquitto"]
    args = dict(zip(argv[3::2], argv[4::2]))
    assert args == {"--ca-dir": "/var/lib/dordt-gateway/ca", "--out": "/etc/dordt/mosquitto",
                    "--key-group": "mosquitto", "--persistence": "/var/lib/mosquitto"}
    assert keys["Service.Restart"] == ["always"]


def _executable_stand_ins(text: str) -> str:
    """Replace executables that exist only on a gateway (/opt/dordt/bin/...) by one that
    exists here, so `verify` checks everything else."""
    return re.sub(r"/opt/dordt/bin/\w+", shutil.which("true") or "/bin/true", text)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (the keys are checked above)")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    units = tmp_path / "units"
    (units / "mosquitto.service.d").mkdir(parents=True)
    (units / "dordt-gateway.service").write_text(
        _executable_stand_ins((SYSTEMD / "dordt-gateway.service").read_text()))
    debian = Path("/lib/systemd/system/mosquitto.service")
    (units / "mosquitto.service").write_text(
        debian.read_text() if debian.exists() else
        "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    drop_in = _executable_stand_ins((SYSTEMD / "dordt-mosquitto.conf").read_text())
    if not Path("/usr/sbin/mosquitto").exists():
        drop_in = drop_in.replace("/usr/sbin/mosquitto", shutil.which("true") or "/bin/true")
    (units / "mosquitto.service.d" / "dordt.conf").write_text(drop_in)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    for unit in ("dordt-gateway.service", "mosquitto.service"):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], cwd=units, env=env,
                           capture_output=True, text=True)
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), unit


# -- the operations guide -------------------------------------------------------------------


def test_the_guide_names_only_fleet_commands_that_exist():
    from dordt.cli import build_parser

    parser = build_parser()
    text = DOC.read_text()
    used = set(re.findall(r"dordt fleet ca ([a-z-]+)", text))
    used |= {("keyring", c) for c in re.findall(r"dordt fleet (enrol|list|revoke)\b", text)}
    assert {"init", "issue-node", "issue-gateway", "revoke", "crl", "list",
            "export-gateway"} <= used
    for command in used:
        argv = (["fleet", command[1], "--help"] if isinstance(command, tuple)
                else ["fleet", "ca", command, "--help"])
        with pytest.raises(SystemExit) as done:
            parser.parse_args(argv)
        assert done.value.code == 0, argv


def test_the_guide_explains_every_option_of_the_generated_broker_configuration(tmp_path):
    from fleet.ca import FleetCA
    from gateway.mosquitto import BrokerSettings, render

    ca = FleetCA.init(tmp_path / "ca")
    ca.issue_gateway("lamp17", ["lamp17.local"])
    conf = render(ca.layout.root, "/b", settings=BrokerSettings(run_as="mosquitto"))
    options = {line.split()[0] for line in conf["mosquitto.conf"].splitlines()
               if line and not line.startswith("#")} - {"user"}
    table = DOC.read_text().split("## 5. The broker", 1)[1].split("\n## ", 1)[0]
    missing = [o for o in sorted(options) if f"`{o}`" not in table]
    assert not missing, f"docs/gateway-operations.md section 5 does not explain {missing}"


def test_the_guide_explains_the_health_endpoints():
    from gateway.health import Health

    text = DOC.read_text().split("## 7. Health", 1)[1].split("\n## ", 1)[0]
    assert "TODO" not in text and "/healthz" in text and "/metrics" in text
    # every problem the health check can report has a row saying what to do
    import inspect
    source = inspect.getsource(Health.snapshot)
    for problem in ("pipeline loop stopped", "broker disconnected", "store not taking writes",
                    "disk nearly full"):
        assert problem in source and f"`{problem}`" in text

"""Device profiles: every built-in loads, and each kind of bad profile is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeslim.errors import EdgeslimError
from edgeslim.targets.profile import DeviceProfile, list_profiles, load_profile

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "board",
    "target": {"arch": "aarch64", "cpu": "Cortex-A72", "cores": 4, "memory_mb": 4096},
    "runtime": {"threads": 2},
    "access": {"kind": "none"},
    "predict": {"gflops_per_thread": 8.0, "memory_gbps": 4.0},
}


def write(tmp_path: Path, data, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_change(section: str | None, key: str, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    (data if section is None else data[section])[key] = value
    return data


def test_builtins_cover_the_required_devices():
    profiles = {p.name: p for p in list_profiles()}
    files = sorted(p.stem for p in (REPO / "devices").glob("*.yaml"))
    assert sorted(profiles) == files  # each built-in's name is its file name, so it resolves by name
    cpus = " ".join(p.target.cpu for p in profiles.values())
    for needed in ("Cortex-A72", "Cortex-A76", "Cortex-A55", "Cortex-A78", "Neoverse-N1"):
        assert needed in cpus
    assert profiles["x86-64-cpu"].access.kind == "local" and profiles["x86-64-cpu"].runtime.threads == 1
    assert profiles["nvidia-gpu"].access.kind == "cuda"
    assert profiles["raspberry-pi-4"].access.kind == "qemu-arm"
    assert "jetson-orin" in profiles and profiles["jetson-orin"].predict is not None
    for profile in profiles.values():
        assert profile.predict is not None, f"{profile.name} needs prediction figures"


def test_load_by_name_and_by_path_agree(tmp_path):
    by_name = load_profile("raspberry-pi-4")
    by_path = load_profile(REPO / "devices" / "raspberry-pi-4.yaml")
    assert by_name == by_path
    assert by_name.access.qemu_cpu == "cortex-a72"
    custom = load_profile(write(tmp_path, GOOD))
    assert isinstance(custom, DeviceProfile) and custom.runtime.threads == 2
    assert custom.runtime.execution_providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("data, expected", [
    (with_change("runtime", "thread", 2), "key 'runtime.thread': unknown key"),
    (with_change(None, "budget", {}), "key 'budget': unknown key"),
    ({k: v for k, v in GOOD.items() if k != "target"}, "key 'target': required key is missing"),
    (with_change("target", "cores", "four"), "key 'target.cores'"),
    (with_change("target", "arch", "sparc"), "key 'target.arch'"),
    (with_change("runtime", "threads", 0), "key 'runtime.threads'"),
    (with_change("runtime", "threads", 8), "runtime.threads 8 exceeds target.cores 4"),
    (with_change("access", "kind", "adb"), "key 'access.kind'"),
    (with_change("access", "kind", "ssh"), "access.kind 'ssh' needs access.host"),
    (with_change(None, "access", {"kind": "qemu-arm", "qemu_cpu": " "}), "access.qemu_cpu is empty"),
    (with_change(None, "access", {"kind": "cuda"}), "needs 'CUDAExecutionProvider'"),
    ({k: v for k, v in GOOD.items() if k != "predict"}, "needs a 'predict' section"),
    (with_change("predict", "memory_gbps", -1), "key 'predict.memory_gbps'"),
    (with_change(None, "name", "has space"), "key 'name'"),
    ([1, 2], "must be a YAML mapping"),
])
def test_bad_profile_is_one_line_naming_the_problem(tmp_path, data, expected):
    with pytest.raises(EdgeslimError) as err:
        load_profile(write(tmp_path, data))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "board.yaml" in message


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: board\ntarget: [unclosed\n")
    with pytest.raises(EdgeslimError, match=r"not valid YAML at line \d"):
        load_profile(path)


def test_unknown_device_name_lists_the_builtins():
    with pytest.raises(EdgeslimError, match="x86-64-cpu"):
        load_profile("no-such-device")


def test_missing_profile_file():
    with pytest.raises(EdgeslimError, match="does not exist"):
        load_profile("/nonexistent/board.yaml")


def test_qemu_max_cpu_is_a_valid_profile_the_runner_probes(tmp_path):
    """Whether ``-cpu max`` computes INT8 right depends on the QEMU version, so the profile accepts it
    and the qemu runner's probe decides (tests/test_runners_qemu.py)."""
    for cpu in ("max", "max,sme=off", "max,sme=on"):
        profile = load_profile(write(tmp_path, with_change(None, "access", {"kind": "qemu-arm", "qemu_cpu": cpu})))
        assert profile.access.qemu_cpu == cpu


def test_devices_show_prints_what_applies_and_stays_a_valid_profile(capsys):
    """Each built-in profile: the printed YAML loads back as the same profile, holds only the access
    keys its kind uses (no ssh host on a qemu device) and no prediction figures for a measured
    device, and a last line says what its cells will contain."""
    import yaml

    from edgeslim.cli import main
    from edgeslim.targets.profile import ACCESS_KINDS, list_profiles, profile_from_dict, shows_predict

    for profile in list_profiles():
        assert main(["devices", "show", profile.name]) == 0
        out = capsys.readouterr().out
        *body, last = out.strip().splitlines()
        shown = yaml.safe_load("\n".join(body))
        keys, predicts, cells = ACCESS_KINDS[profile.access.kind]
        expected = profile if shows_predict(profile) else profile.model_copy(update={"predict": None})
        assert profile_from_dict(shown, profile.name) == expected
        assert set(shown["access"]) == {"kind", *keys}
        assert ("predict" in shown) == shows_predict(profile) and shows_predict(profile) >= (
            predicts and profile.predict is not None)
        assert last == f"# cells: {cells}"

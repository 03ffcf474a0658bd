"""Hardware profiles: the paper's platforms, user files, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from perfmodel import (
    HardwareProfile,
    ProfileError,
    UnknownProfileError,
    get_named_profile,
    get_profile,
    parse_profile,
    profile_names,
    save_profile,
)

VALID = {
    "name": "my-box",
    "dense_flops_per_s": 1e11,
    "memory_bandwidth_bytes_per_s": 2e10,
    "sparse_overhead": 2.0,
    "provenance": {"kind": "user", "source": "vendor datasheet"},
}


@pytest.mark.parametrize(
    ("name", "flops", "bandwidth", "alpha", "batch"),
    [
        ("atom-c2750", 62e9, 15e9, 1.2, 32),
        ("xeon-e5-2697v4", 2150e9, 122e9, 3.0, 144),
        ("xeon-phi-7250", 4540e9, 480e9, 3.6, 272),
    ],
)
def test_paper_profiles_ship_table_1_numbers(name, flops, bandwidth, alpha, batch):
    profile = get_profile(name)
    assert profile.dense_flops_per_s == flops
    assert profile.memory_bandwidth_bytes_per_s == bandwidth
    assert profile.sparse_overhead == alpha
    assert profile.sparse_bytes_per_nonzero == 2.0
    assert profile.default_batch == batch
    assert profile.provenance.kind == "paper"
    assert "Park et al." in profile.provenance.source


def test_profiles_are_frozen(xeon):
    with pytest.raises(ValueError, match="frozen"):
        xeon.sparse_overhead = 1.0


def test_unknown_profile_lists_valid_names():
    with pytest.raises(UnknownProfileError) as caught:
        get_profile("pentium-ii")
    assert caught.value.valid == ["atom-c2750", "xeon-e5-2697v4", "xeon-phi-7250"]
    assert "valid names: atom-c2750, xeon-e5-2697v4, xeon-phi-7250" in str(caught.value)


def test_named_profiles_never_resolve_paths(tmp_path, monkeypatch):
    """get_profile takes a path (the CLI's --hardware box.json); get_named_profile, what the
    API resolves request names with, takes names only, and a path is an unknown name."""
    path = tmp_path / "box.json"
    path.write_text(json.dumps(VALID))
    assert get_profile(path).name == "my-box"
    monkeypatch.chdir(tmp_path)
    for name in ("box.json", str(path), ".", "missing.json"):
        with pytest.raises(UnknownProfileError) as caught:
            get_named_profile(name)
        assert caught.value.valid == ["atom-c2750", "xeon-e5-2697v4", "xeon-phi-7250"]
    save_profile(HardwareProfile.model_validate(VALID))
    assert get_named_profile("my-box").name == "my-box"
    assert get_named_profile("atom-c2750").name == "atom-c2750"


def test_load_json_and_toml_files(tmp_path):
    json_file = tmp_path / "box.json"
    json_file.write_text(json.dumps(VALID))
    toml_file = tmp_path / "box.toml"
    toml_file.write_text(
        'name = "my-box"\ndense_flops_per_s = 1e11\nmemory_bandwidth_bytes_per_s = 2e10\n'
        'sparse_overhead = 2.0\n[provenance]\nkind = "user"\nsource = "vendor datasheet"\n'
    )
    assert get_profile(json_file) == get_profile(str(toml_file))
    assert get_profile(json_file).sparse_bytes_per_nonzero == 2.0  # β defaults to fp32 CSR


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dense_flops_per_s": -1}, "dense_flops_per_s"),
        ({"memory_bandwidth_bytes_per_s": "fast"}, "memory_bandwidth_bytes_per_s"),
        ({"sparse_overhead": 0}, "sparse_overhead"),
        ({"name": "Has Spaces"}, "name"),
        ({"provenance": {"kind": "rumour", "source": "x"}}, "provenance.kind"),
        ({"peak": 3}, "peak"),
        # A 7 MB description was accepted, and the listing of profiles sent it to everyone.
        ({"description": "x" * 1001}, "description"),
        ({"default_batch": 10**30}, "default_batch"),  # were accepted
        ({"cores": 10**30}, "cores"),
        ({"provenance": {"kind": "user", "source": "x", "notes": "y" * 1001}}, "provenance.notes"),
    ],
)
def test_invalid_profile_error_names_the_field(tmp_path, change, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**VALID, **change}))
    with pytest.raises(ProfileError, match=rf"field '{field}'"):
        get_profile(path)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    """TOML has inf and nan literals (and JSON's 1e400 reads as inf): inf passed `gt=0`, and a
    profile with an infinite compute rate predicted 0 µs everywhere."""
    path = tmp_path / "box.toml"
    path.write_text(
        f'name = "box"\ndense_flops_per_s = 1e11\nmemory_bandwidth_bytes_per_s = {value}\n'
        'sparse_overhead = 2.0\n[provenance]\nkind = "user"\nsource = "x"\n'
    )
    with pytest.raises(ProfileError, match=r"field 'memory_bandwidth_bytes_per_s'.*finite"):
        get_profile(path)


def test_missing_field_is_named():
    data = {k: v for k, v in VALID.items() if k != "sparse_overhead"}
    with pytest.raises(ProfileError, match="field 'sparse_overhead': Field required"):
        parse_profile(data)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        get_profile(tmp_path / "missing.json")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [unclosed")
    with pytest.raises(ProfileError, match="not valid JSON/TOML"):
        get_profile(broken)


def test_saved_profiles_are_found_by_name_and_shadow_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEETSPOT_PROFILE_DIR", str(tmp_path))
    profile = parse_profile(VALID)
    path = save_profile(profile)
    assert path == tmp_path / "my-box.json"
    assert "my-box" in profile_names()
    assert get_profile("my-box") == profile
    assert isinstance(get_profile("atom-c2750"), HardwareProfile)


def test_saved_profiles_are_readable_as_the_umask_allows(tmp_path):
    """Written through a tempfile they were 0600: other users of a shared data directory
    could not read them."""
    import os
    import stat

    from perfmodel import save_profile

    umask = os.umask(0o022)
    try:
        path = save_profile(get_profile("atom-c2750").model_copy(update={"name": "shared"}),
                            tmp_path)  # fmt: skip
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]  # no temp file left


def test_profile_file_name_must_match_declared_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEETSPOT_PROFILE_DIR", str(tmp_path))
    (tmp_path / "other.json").write_text(json.dumps(VALID))
    with pytest.raises(ProfileError, match="declares name 'my-box'"):
        get_profile("other")


def test_user_profiles_named_like_a_built_in_are_skipped(tmp_path, monkeypatch, caplog):
    """They replaced the paper's platform silently (or, broken, hid it): built-ins win."""
    from perfmodel.hardware import load_profiles

    builtin = get_profile("xeon-e5-2697v4")
    monkeypatch.setenv("SWEETSPOT_PROFILE_DIR", str(tmp_path))
    (tmp_path / "xeon-e5-2697v4.json").write_text(
        json.dumps({**VALID, "name": "xeon-e5-2697v4"}))  # fmt: skip
    (tmp_path / "atom-c2750.toml").write_text("not = [valid")
    with caplog.at_level("WARNING", logger="sweetspot.hardware"):
        assert get_profile("xeon-e5-2697v4") == builtin
        assert isinstance(get_profile("atom-c2750"), HardwareProfile)
        profiles, problems = load_profiles()
    assert problems == {}
    assert {p.name: p for p in profiles}["xeon-e5-2697v4"] == builtin
    assert profile_names().count("xeon-e5-2697v4") == 1
    warned = [r.getMessage() for r in caplog.records]
    assert sum("xeon-e5-2697v4.json" in m for m in warned) == 1, warned
    assert any("atom-c2750.toml" in m for m in warned)

"""/etc/nv_tegra_release -> L4T version -> JetPack release."""

from __future__ import annotations

from pathlib import Path

import pytest

from onboard.diag.tegra_release import (
    jetpack_for_l4t,
    newest_known_l4t,
    parse_nv_tegra_release,
    read_l4t_release,
)
from onboard.errors import ParseError

pytestmark = pytest.mark.tier1

JETPACK_6_2 = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)


def _release(revision: str) -> str:
    return (
        f"# R36 (release), REVISION: {revision}, GCID: 1, BOARD: generic, EABI: aarch64, "
        "DATE: Mon Jan  1 00:00:00 UTC 2024\n"
    )


def test_the_jetpack_6_2_release_file() -> None:
    release = parse_nv_tegra_release(JETPACK_6_2)
    assert release.major == 36
    assert release.revision == "4.3"
    assert release.version == "36.4.3"
    assert release.jetpack == "6.2"
    assert release.release_kind == "release"
    assert release.gcid == "38968081"
    assert release.board == "generic"
    assert release.eabi == "aarch64"
    assert release.date == "Wed Jan  8 01:49:37 UTC 2025"
    assert release.to_dict()["jetpack"] == "6.2"


@pytest.mark.parametrize(
    ("revision", "l4t", "jetpack"),
    [
        ("2.0", "36.2.0", "6.0 DP"),
        ("3.0", "36.3.0", "6.0"),
        ("4.0", "36.4.0", "6.1"),
        ("4", "36.4.0", "6.1"),
        ("4.2", "36.4.2", "6.1.1"),
        ("4.3", "36.4.3", "6.2"),
        ("4.4", "36.4.4", "6.2.1"),
        ("5.0", "36.5.0", "6.2.2"),
        ("5", "36.5.0", "6.2.2"),
    ],
)
def test_l4t_to_jetpack_table(revision: str, l4t: str, jetpack: str) -> None:
    release = parse_nv_tegra_release(_release(revision))
    assert release.version == l4t
    assert release.jetpack == jetpack
    assert jetpack_for_l4t(l4t) == jetpack
    assert release.newer_than_known is False


def test_the_newest_known_release_is_r36_5_0_jetpack_6_2_2() -> None:
    assert newest_known_l4t() == "36.5.0"
    release = parse_nv_tegra_release(
        "# R36 (release), REVISION: 5.0, GCID: 1, BOARD: generic, EABI: aarch64, "
        "DATE: Mon Jan  1 00:00:00 UTC 2024\n"
    )
    assert release.to_dict()["jetpack"] == "6.2.2"
    assert release.to_dict()["newer_than_known"] is False


@pytest.mark.parametrize(("major", "revision"), [(36, "5.1"), (36, "6.0"), (37, "0.0"), (38, "2.0")])
def test_a_release_newer_than_the_table_is_unknown_not_guessed(major: int, revision: str) -> None:
    text = _release(revision).replace("# R36 ", f"# R{major} ")
    release = parse_nv_tegra_release(text)
    assert release.jetpack is None
    assert release.newer_than_known is True
    assert release.to_dict()["jetpack"] is None


def test_an_unknown_l4t_version_has_no_jetpack() -> None:
    assert parse_nv_tegra_release(_release("9.9")).jetpack is None
    assert jetpack_for_l4t("35.5.0") is None
    assert parse_nv_tegra_release(_release("1.0")).newer_than_known is False  # older, not newer
    assert jetpack_for_l4t("36.4") == "6.1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("R36 release 4.3", "expected '# R<major>"),
        ("# R36 (release), GCID: 1, BOARD: generic", "no REVISION field"),
        ("# R36 (release), REVISION: four, GCID: 1", "bad REVISION 'four'"),
    ],
)
def test_a_malformed_release_file_is_a_parse_error(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match="cannot parse nv_tegra_release") as caught:
        parse_nv_tegra_release(text)
    assert reason in caught.value.reason


def test_reading_the_file_and_a_host_that_is_no_jetson(tmp_path: Path) -> None:
    path = tmp_path / "nv_tegra_release"
    path.write_text(JETPACK_6_2)
    release = read_l4t_release(path)
    assert release is not None and release.jetpack == "6.2"
    assert read_l4t_release(tmp_path / "absent") is None

"""Scripts fail early and clearly on input that cannot work, instead of late tracebacks or silent no-ops."""

from __future__ import annotations

import pytest

from lit_imit.data import write_episode
from tests.conftest import make_episode_arrays


@pytest.mark.parametrize("count", ["0", "-3", "many"])
def test_record_demos_refuses_a_useless_episode_count(tmp_path, capsys, count):
    from lit_imit.tools import record_demos

    with pytest.raises(SystemExit) as info:
        record_demos.main(["--task", "transfer_cube", "--episodes", count, "--out", str(tmp_path / "store")])
    assert info.value.code == 2
    assert "argument --episodes" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_visualize_names_the_missing_qpos_and_writes_nothing(tmp_path, capsys):
    from lit_imit.tools import visualize_episodes

    path = tmp_path / "episode_000004.hdf5"
    arrays = make_episode_arrays(6, cameras=("top",))
    del arrays["observations/qpos"]
    write_episode(path, arrays, {})
    assert visualize_episodes.main([str(path), "--out", str(tmp_path / "viz")]) == 1
    err = capsys.readouterr().err
    assert "episode_000004.hdf5" in err and "missing key 'observations/qpos'" in err
    assert not (tmp_path / "viz").exists()

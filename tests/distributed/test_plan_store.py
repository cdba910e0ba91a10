"""Shard planning, the shard store and the error without Ray (no Ray instance needed)."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from boundkit.distributed.plan import Shard, plan_shards, remaining_ranges
from boundkit.distributed.store import ShardStore, job_key

# ------------------------------------------------------------------------------ no Ray needed


@given(n=st.integers(0, 5000), chunk=st.integers(1, 300), shards=st.integers(1, 80))
def test_shards_are_disjoint_whole_chunks_covering_all_samples(n, chunk, shards):
    plan = plan_shards(n, chunk, shards)
    assert len(plan) <= shards
    pos = 0
    for s in plan:
        assert s.start == pos and s.stop > s.start
        assert s.start % chunk == 0 and (s.stop % chunk == 0 or s.stop == n)
        pos = s.stop
    assert pos == n


@given(n=st.integers(1, 3000), chunk=st.integers(1, 200), a=st.integers(1, 40),
       b=st.integers(1, 40), data=st.data())
def test_remaining_ranges_reuse_any_plan_and_leave_aligned_gaps(n, chunk, a, b, data):
    old = plan_shards(n, chunk, a)
    done = data.draw(st.lists(st.sampled_from(old), unique=True)) + \
        data.draw(st.lists(st.sampled_from(plan_shards(n, chunk, b)), unique=True))
    kept, gaps = remaining_ranges(n, chunk, done)
    cover = sorted(kept + gaps)
    pos = 0
    for s in cover:
        assert s.start == pos and s.start % chunk == 0
        pos = s.stop
    assert pos == n
    assert all(s in done for s in kept)


def test_plan_refuses_misaligned_ranges():
    with pytest.raises(ValueError, match="aligned"):
        plan_shards(100, 64, 2, start=10)
    with pytest.raises(ValueError, match="positive"):
        plan_shards(100, 64, 0)


def test_store_writes_atomically_and_ignores_temporary_files(tmp_path):
    store = ShardStore(tmp_path, job_key({"a": 1}))
    store.write(Shard(0, 64), {"x": torch.arange(3.0), "names": ["a", "b"]})
    (store.path / ".shard-000000064-000000128.xyz.tmp").write_bytes(b"half a file")
    assert store.done() == [Shard(0, 64)]
    assert torch.equal(store.read(Shard(0, 64))["x"], torch.arange(3.0))
    assert store.clean_temporary() == 1
    assert job_key({"a": 1}) != job_key({"a": 2})


def test_missing_ray_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    from boundkit.cli import EXIT_BAD_INPUT, main
    from boundkit.distributed import DistributedError, require_ray
    from boundkit.models import build_model, save_model

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DistributedError, match=r"boundkit\[distributed\]"):
        require_ray()
    f = save_model(build_model("digits_mlp", seed=0), tmp_path / "m.safetensors",
                   arch="digits_mlp")
    code = main(["certify", "--model", str(f), "--data", "digits", "--n", "8", "--quiet",
                 "--out", str(tmp_path / "c.json"), "--cluster", "ray",
                 "--shard-dir", str(tmp_path / "shards")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1 and "boundkit[distributed]" in err[0]


def test_bad_cluster_spec_is_a_one_line_error(tmp_path, capsys):
    from boundkit.cli import EXIT_BAD_INPUT, main

    code = main(["certify", "--model", str(tmp_path / "none.safetensors"), "--data", "digits",
                 "--cluster", "spark", "--out", str(tmp_path / "c.json")])
    assert code == EXIT_BAD_INPUT


def test_unreachable_cluster_is_a_quick_one_line_error():
    pytest.importorskip("ray")
    import ray

    from boundkit.distributed import DistributedError, RayExecutor

    if ray.is_initialized():
        pytest.skip("a Ray instance is already up in this process")
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="cannot join the Ray cluster at 127.0.0.1:1"):
        RayExecutor("127.0.0.1:1", timeout_s=5).connect()
    assert time.monotonic() - t0 < 10

"""Atomic writes: a failed write leaves the previous file and no temporary behind."""
from __future__ import annotations

import pytest

from derainkit.fsutil import atomic_path, atomic_write_text


@pytest.mark.parametrize("durable", [False, True])
def test_failed_write_keeps_previous_file(tmp_path, durable):
    target = tmp_path / "sub" / "record.json"
    atomic_write_text(target, "old", durable=durable)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, durable=durable) as tmp:
            tmp.write_text("half a new rec")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]
    atomic_write_text(target, "new", durable=durable)
    assert target.read_text() == "new"

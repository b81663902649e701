"""The tuning study's repository variants (serving/compare.py)."""

from __future__ import annotations

from pathlib import Path

from freshrec.offline.benchmarks.serving.compare import variant_repository


def test_variant_repository_changes_only_the_towers(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for m in ("user_tower", "recommend"):
        (base / m / "1").mkdir(parents=True)
        (base / m / "1" / "model.py").write_text("x")
        cfg = 'name: "%s"\ninstance_group {\n  count: 1\n  kind: KIND_CPU\n}\n' % m
        if m == "user_tower":
            cfg += 'dynamic_batching {\n  max_queue_delay_microseconds: 200\n}\nparameters {\n  key: "ort_threads"\n  value {\n    string_value: "1"\n  }\n}\n'
        (base / m / "config.pbtxt").write_text(cfg)
    from freshrec.export.repository import read_config

    out = variant_repository(base, tmp_path / "v", queue_delay_us=0, ort_threads=2, tower_instances=2)
    ut = read_config(out / "user_tower")
    assert ut.HasField("dynamic_batching") and ut.dynamic_batching.max_queue_delay_microseconds == 0
    assert ut.parameters["ort_threads"].string_value == "2" and [g.count for g in ut.instance_group] == [2]
    assert read_config(out / "recommend") == read_config(base / "recommend")
    assert (out / "user_tower" / "1" / "model.py").is_symlink()
    # from a delay of 0 (which text_format leaves out) to a set one
    (base / "user_tower" / "config.pbtxt").write_text('name: "user_tower"\ndynamic_batching {\n}\n')
    out = variant_repository(base, tmp_path / "v2", queue_delay_us=200)
    assert read_config(out / "user_tower").dynamic_batching.max_queue_delay_microseconds == 200

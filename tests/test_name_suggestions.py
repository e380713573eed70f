"""Unknown names (dataset, config key, meta-architecture, CLIP model) give one short line with the
closest names and how to list them all."""
import pytest

from conftest import TINY_CONFIG, run_cli

MAX_LINE = 200


def _error(err):
    from escnet.utils.errors import ERROR_PREFIX

    line = f"{ERROR_PREFIX}{err}"
    assert "\n" not in line and len(line) <= MAX_LINE, line
    return line


def test_unknown_dataset_suggests_closest_names():
    from escnet.data.build import check_dataset_registered
    from escnet.utils.errors import EscnetError

    with pytest.raises(EscnetError) as info:
        check_dataset_registered("synthetic_shape_val")
    line = _error(info.value)
    assert line.startswith("error: unknown dataset 'synthetic_shape_val'; closest: 'synthetic_shapes_val'")
    assert line.endswith("list all: python tools/list_datasets.py")
    with pytest.raises(EscnetError) as info:
        check_dataset_registered("no_such")
    assert "cityscapes" not in _error(info.value)


def test_long_names_and_many_matches_stay_within_the_bound():
    from escnet.utils.names import unknown_name_message

    known = [f"ade20k_full_sem_seg_freq_val_all_variant_{i}" for i in range(50)]
    message = unknown_name_message("dataset", "ade20k_full_sem_seg_freq_val_al" * 5, known, "list all: tool")
    _error(message)
    message = unknown_name_message("dataset", "ade20k_full_sem_seg_freq_val_all_variant", known, "list all: tool")
    assert "closest: 'ade20k_full_sem_seg_freq_val_all_variant_" in _error(message)
    assert message.endswith("; list all: tool")


def test_unknown_config_key_suggests_closest_keys():
    from escnet.engine import load_config
    from escnet.utils.errors import EscnetError

    with pytest.raises(EscnetError) as info:
        load_config(TINY_CONFIG, ["MODEL.ESCNET.HIDEN_DIM", "3"])
    line = _error(info.value)
    assert line.startswith("error: bad config (tiny.yaml): unknown key 'MODEL.ESCNET.HIDEN_DIM'; closest: "
                           "'MODEL.ESCNET.HIDDEN_DIM'")
    assert line.endswith("list all: python train_net.py --list config-keys")


def test_unknown_meta_architecture_uses_the_registry(monkeypatch):
    from detectron2.modeling import META_ARCH_REGISTRY

    from escnet.engine.setup import check_meta_architecture
    from escnet.utils.errors import EscnetError

    # A model registered later (as SED or CLIPer are) is suggested without any list to update.
    monkeypatch.setitem(META_ARCH_REGISTRY._obj_map, "H2ProbeSegmentor", object)
    with pytest.raises(EscnetError) as info:
        check_meta_architecture("H2ProbeSegmenter")
    line = _error(info.value)
    assert line.startswith("error: unknown MODEL.META_ARCHITECTURE 'H2ProbeSegmenter'; closest: 'H2ProbeSegmentor'")
    assert line.endswith("list all: python train_net.py --list meta-architectures")
    with pytest.raises(EscnetError) as info:
        check_meta_architecture("ESCnet")
    assert "closest: 'ESCNet'" in _error(info.value)


def test_unknown_clip_model_suggests_closest_names():
    from escnet.modeling.clip_weights import resolve_model_config
    from escnet.utils.errors import EscnetError

    with pytest.raises(EscnetError) as info:
        resolve_model_config("ViT-B-61")
    line = _error(info.value)
    assert line.startswith("error: unknown open_clip model (MODEL.ESCNET.CLIP_MODEL) 'ViT-B-61'; closest: 'ViT-B-16'")
    assert "list all: python train_net.py --list clip-models" in line


def test_train_net_prints_one_short_line_for_an_unknown_dataset(tmp_path):
    proc = run_cli(["train_net.py", "--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path),
                    "DATASETS.TRAIN", "('no_such',)"])
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: unknown dataset 'no_such'") and len(line) <= MAX_LINE, line


def test_list_flag_and_list_datasets_tool():
    from escnet.engine.listing import list_names

    assert "ESCNet" in list_names("meta-architectures")
    assert "ViT-B-16" in list_names("clip-models")
    assert "synthetic_shapes_val" in list_names("datasets")
    proc = run_cli(["train_net.py", "--list", "config-keys", "--config-file", TINY_CONFIG])
    assert proc.returncode == 0 and "MODEL.ESCNET.HIDDEN_DIM = 32" in proc.stdout.splitlines()
    proc = run_cli(["tools/list_datasets.py"])
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if line.startswith("synthetic_shapes_val "))
    assert "Synthetic-val" in row and " 6 " in row
    assert any(line.startswith("ade20k_150_test_sem_seg ") and "not prepared" in line for line in proc.stdout.splitlines())

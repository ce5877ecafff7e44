"""The evaluation verbs end to end on a tiny trained checkpoint: evaluate (every task, FLAIR CSV
and image-folder data), index/search, and the bad-input messages."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fundus_lit.cli import cli_main, main
from fundus_lit.core.errors import DataError
from fundus_lit.data import FlairCSVSource, ImageFolderSource
from fundus_lit.eval.casesearch import load_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """48 synthetic images written as FLAIR CSVs (two sites) and a checkpoint trained 2 steps."""
    root = tmp_path_factory.mktemp("evaldata")
    main(["synth", "--out", str(root), "--n", "48", "--size", "72", "--sites", "2", "--seed", "3"])
    csvs = sorted(root.glob("*.csv"))
    train = [{"class_path": "fundus_lit.data.FlairCSVSource", "init_args": {"csv": str(csvs[0])}}]
    cli = cli_main(
        [
            "fit",
            f"--config={ROOT / 'recipes' / 'clip.yaml'}",
            f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
            f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root / 'runs'}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            f"--data.init_args.train={json.dumps(train)}",
            "--data.init_args.val=null",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=64",
            "--model.init_args.vision.name=test_resnet",
        ]
    )
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    return root, csvs, ckpt


def first_categories(csv: Path) -> Counter:
    return Counter(r.categories[0] for r in FlairCSVSource(str(csv)).load() if r.categories)


def eval_config(path: Path, train: list, test: list, classes: list[str]) -> Path:
    config = {
        "data": {
            "class_path": "fundus_lit.FundusDataModule",
            "init_args": {"train": train, "test": test, "num_workers": 0, "batch_size": 8},
        },
        "classes": classes,
        "probe": {"shots": [1, 2], "fractions": [0.5, 1.0], "seeds": 2},
        "fewshot": {"shots": [1, 2], "seeds": 2, "clip_adapter_epochs": 20, "tip_f_epochs": 5},
        "retrieval": {"ks": [1, 5]},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def csv_source(csv: Path) -> dict:
    return {"class_path": "fundus_lit.data.FlairCSVSource", "init_args": {"csv": str(csv)}}


def shared_classes(csvs: list[Path], n: int = 3) -> list[str]:
    a, b = first_categories(csvs[0]), first_categories(csvs[1])
    return [c for c, _ in (a & b).most_common(n)]


def test_evaluate_writes_every_output(trained, tmp_path, capsys):
    root, csvs, ckpt = trained
    classes = shared_classes(csvs)
    train, test = [csv_source(csvs[0])], [csv_source(csvs[1])]
    config = eval_config(tmp_path / "eval.yaml", train, test, classes)
    out = tmp_path / "out"
    main(["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={out}"])
    report = json.loads((out / "eval.json").read_text())
    assert set(report) == {"zeroshot", "probe", "fewshot", "retrieval"}
    assert report["zeroshot"]["classes"] == classes
    probe = report["probe"]
    assert {"1-shot", "2-shot", "50%", "100%"} <= set(probe)
    assert probe["100%"]["seeds"] == 1 and probe["1-shot"]["seeds"] == 2
    assert 0.0 <= probe["1-shot"]["aca"]["mean"] <= 1.0
    assert {"clip_adapter", "tip_adapter", "tip_adapter_f"} <= set(report["fewshot"])
    retrieval = report["retrieval"]
    assert {"i2t", "t2i", "i2i"} == set(retrieval)
    assert retrieval["i2i"]["gallery_split"] == "train"
    for task in retrieval.values():
        assert 0.0 <= task["R@1"] <= task["R@5"] <= 1.0 and "mAP@5" in task
    markdown = (out / "eval.md").read_text()
    assert "### linear probe" in markdown and "| i2i |" in markdown
    assert (out / "confusion_zeroshot.png").is_file() and (out / "confusion_probe.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/zeroshot/aca", "eval/probe/100%/aca", "eval/retrieval/i2i/mAP@5"} <= tags
    assert "| aca |" in capsys.readouterr().out.replace("setting | aca", "| aca |")
    main(["summary", str(out)])  # the compact table the demo ends with
    lines = capsys.readouterr().out.splitlines()
    zeroshot = next(line for line in lines if "zero-shot ACA" in line).split()
    assert zeroshot[-2:] == ["main", f"{report['zeroshot']['aca']:.3f}"]
    probe_row = next(line for line in lines if "linear probe ACA, 100%" in line)
    assert probe_row.endswith(f"{probe['100%']['aca']['mean']:.3f}")
    assert any(line.strip() == str(out / "confusion_zeroshot.png") for line in lines)
    assert any("retrieval i2i R@1" in line for line in lines)


def test_summary_of_a_directory_without_results_says_what_to_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no eval.json" in capsys.readouterr().err


def test_evaluate_image_folders_and_tags(trained, tmp_path):
    """One folder per class, folder names mapped to class names; the run's sections carry the
    tag so a second evaluation does not overwrite the first."""
    root, csvs, ckpt = trained
    classes = shared_classes(csvs, 2)
    for split, csv in (("train", csvs[0]), ("test", csvs[1])):
        for k, record in enumerate(FlairCSVSource(str(csv)).load()):
            if record.categories and record.categories[0] in classes:
                folder = tmp_path / split / f"grade{classes.index(record.categories[0])}"
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(csv.parent / record.image, folder / f"{k}.png")
    names = {f"grade{i}": c for i, c in enumerate(classes)}
    sources = {
        split: [
            {
                "class_path": "fundus_lit.data.ImageFolderSource",
                "init_args": {"root": str(tmp_path / split), "names": names},
            }
        ]
        for split in ("train", "test")
    }
    config = eval_config(tmp_path / "eval.yaml", sources["train"], sources["test"], classes)
    out = tmp_path / "out"
    args = [f"--ckpt={ckpt}", f"--config={config}", f"--out={out}", "--tasks=probe,retrieval"]
    main(["evaluate", *args, "--tag=folders"])
    report = json.loads((out / "eval.json").read_text())
    assert set(report) == {"probe_folders", "retrieval_folders"}
    n_test = sum(1 for _ in (tmp_path / "test").rglob("*.png"))
    assert report["probe_folders"]["n_test"] == n_test
    assert (out / "eval_folders.md").is_file()


def test_image_folder_source_records_and_errors(tmp_path):
    for folder in ("0", "1"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.png")
    (tmp_path / "1" / "notes.txt").write_text("not an image")
    records = ImageFolderSource(str(tmp_path), names={"0": "normal"}).load()
    assert [r.categories for r in records] == [("normal",), ("1",)]
    assert records[0].dataset == tmp_path.name and records[1].image == "1/a.png"
    with pytest.raises(DataError, match=r"folder\(s\) \['2'\] that do not exist"):
        ImageFolderSource(str(tmp_path), names={"2": "glaucoma"}).load()
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(str(tmp_path / "nope")).load()


def test_absent_class_is_reported_before_any_feature(trained, tmp_path, capsys, monkeypatch):
    root, csvs, ckpt = trained
    classes = [*shared_classes(csvs, 2), "macular hole"]
    train, test = [csv_source(csvs[0])], [csv_source(csvs[1])]
    config = eval_config(tmp_path / "eval.yaml", train, test, classes)

    def no_features(*args, **kwargs):
        raise AssertionError("features were computed before the class check")

    monkeypatch.setattr("fundus_lit.eval.evaluate.extract_features", no_features)
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={tmp_path}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "['macular hole']" in err and "test split" in err


def test_mismatched_checkpoint_names_the_keys(trained, tmp_path, capsys):
    root, csvs, ckpt = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    dropped = next(k for k in weights if k.startswith("encoder.image_proj"))
    del weights[dropped]
    weights["encoder.vision.extra_head.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    config = eval_config(tmp_path / "eval.yaml", [], [csv_source(csvs[1])], shared_classes(csvs, 2))
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", f"--ckpt={bad}", f"--config={config}", "--tasks=zeroshot"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "1 missing keys: " + dropped.removeprefix("encoder.") in err
    assert "1 unexpected keys: vision.extra_head.weight" in err


def test_index_and_search_round_trip(trained, tmp_path, capsys):
    root, csvs, ckpt = trained
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "class_path": "fundus_lit.FundusDataModule",
                    "init_args": {"test": [csv_source(c) for c in csvs], "num_workers": 0},
                }
            }
        )
    )
    index_dir = tmp_path / "index"
    main(["index", f"--ckpt={ckpt}", f"--config={config}", f"--out={index_dir}"])
    case_index = load_index(index_dir)
    assert len(case_index) == 48 == case_index.index.ntotal
    assert case_index.meta["ckpt"] == str(ckpt.resolve())
    query = case_index.records[5]
    capsys.readouterr()
    grid = tmp_path / "grid.png"
    main(["search", f"--index={index_dir}", f"--image={query['path']}", "--k=4", f"--grid={grid}"])
    lines = capsys.readouterr().out.splitlines()
    hits = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(hits) == 4
    rank, score = hits[0].split()[:2]
    assert rank == "1" and float(score) > 0.999  # the query itself is indexed
    assert query["path"] in hits[0]
    assert Image.open(grid).size[0] > 4 * 160
    with pytest.raises(SystemExit) as stop:
        main(["search", f"--index={tmp_path}", f"--image={query['path']}"])
    assert stop.value.code == 2 and "not a fundus-lit case index" in capsys.readouterr().err


def test_module_names_keys_of_a_checkpoint_from_another_model(trained):
    """LightningCLI rebuilds the model from the checkpoint's hyper-parameters; a module built any
    other way (a script, another recipe) gets the key report instead of PyTorch's dump."""
    from fundus_lit.module import PretrainModule

    root, csvs, ckpt = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = dict(state["hyper_parameters"]) | {"embed_dim": 48}
    module = PretrainModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    with pytest.raises(DataError) as err:
        module.on_load_checkpoint(state)
    message = str(err.value)
    assert "does not match the model built from the config" in message
    assert "encoder.image_proj.weight: checkpoint (128, " in message and "vs model (48, " in message


def test_segmentation_transfer_from_synthetic_masks(trained, tmp_path):
    """A decoder trained on the frozen encoder with fractions of the synthetic lesion masks; the
    Dice of a trained decoder beats an empty prediction's 0 on lesion pixels."""
    root, csvs, ckpt = trained
    source = {"class_path": "fundus_lit.data.SyntheticSource"}
    train = [source | {"init_args": {"n": 12, "size": 64, "masks": True, "offset": 100}}]
    test = [source | {"init_args": {"n": 4, "size": 64, "masks": True, "offset": 200}}]
    config = tmp_path / "seg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "class_path": "fundus_lit.FundusDataModule",
                    "init_args": {
                        "train": train,
                        "test": test,
                        "num_workers": 0,
                        "val_fraction": 0.0,
                    },
                },
                "segmentation": {"fractions": [0.25, 1.0], "min_steps": 8, "batch_size": 4},
            }
        )
    )
    out = tmp_path / "out"
    main(
        ["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={out}"]
        + ["--tasks=segmentation"]
    )
    seg = json.loads((out / "eval.json").read_text())["segmentation"]
    assert seg["decoder"] == "fresh" and seg["n_test"] == 4
    assert seg["25%"]["n_train"] == 3 and seg["100%"]["n_train"] == 12
    for setting in ("25%", "100%"):
        assert 0.0 <= seg[setting]["dice"] <= 1.0 and 0.0 <= seg[setting]["dice_per_image"] <= 1.0
    assert "### segmentation" in (out / "eval.md").read_text()
    with pytest.raises(SystemExit) as stop:  # the CLIP checkpoint has no pretrained decoder
        main(
            ["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={out}"]
            + ["--tasks=segmentation", "--segmentation.decoder=pretrained"]
        )
    assert stop.value.code == 2


def test_synth_writes_masks_that_mask_csv_reads(tmp_path):
    import numpy as np

    from fundus_lit.data import MaskCSVSource

    main(["synth", "--out", str(tmp_path), "--n", "3", "--size", "48", "--masks", "true"])
    source = MaskCSVSource(str(tmp_path / "masks.csv"))
    records = source.load()
    source.check(records)
    assert len(records) == 3 and all(r.mask and r.categories for r in records)
    mask = np.asarray(source.open_mask(records[0]))
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
    (tmp_path / records[1].mask).unlink()
    with pytest.raises(DataError, match="1 files listed"):
        source.check(records)


def test_segmentation_with_the_pretrained_g2d_decoder(tmp_path):
    """Fit the G2D recipe 2 steps (tiny), then transfer its pseudo-segmentation decoder."""
    synthetic = {"class_path": "fundus_lit.data.SyntheticSource"}
    train = [synthetic | {"init_args": {"n": 16, "size": 64}}]
    cli = cli_main(
        [
            "fit",
            f"--config={ROOT / 'recipes' / 'clip.yaml'}",
            f"--config={ROOT / 'recipes' / 'g2d.yaml'}",
            f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            f"--data.init_args.train={json.dumps(train)}",
            "--data.init_args.val=null",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=64",
            "--model.init_args.vision.pool_heads=2",
        ]
    )
    assert "train/pseudo_seg" in cli.trainer.callback_metrics
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    masks = {"n": 6, "size": 64, "masks": True}
    data = {
        "train": [synthetic | {"init_args": masks | {"offset": 300}}],
        "test": [synthetic | {"init_args": masks | {"offset": 400}}],
        "num_workers": 0,
        "val_fraction": 0.0,
    }
    config = tmp_path / "seg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"class_path": "fundus_lit.FundusDataModule", "init_args": data},
                "tasks": "segmentation",
                "segmentation": {"fractions": [1.0], "min_steps": 2, "decoder": "pretrained"},
            }
        )
    )
    out = tmp_path / "out"
    main(["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={out}"])
    seg = json.loads((out / "eval.json").read_text())["segmentation"]
    assert seg["decoder"] == "pretrained" and 0.0 <= seg["100%"]["dice"] <= 1.0


EVAL_CONFIGS = sorted((ROOT / "recipes" / "eval").glob("*.yaml"))


@pytest.mark.parametrize("config", EVAL_CONFIGS, ids=lambda path: path.stem)
def test_index_accepts_every_shipped_evaluation_config(trained, tmp_path, capsys, config):
    """Issue 16, item 6: ``index --config recipes/eval/X.yaml`` (the README's suggestion) read
    only ``data:`` and refused the evaluation sections it does not use, with exit status 2."""
    root, csvs, ckpt = trained
    index_dir = tmp_path / "index"
    args = [f"--ckpt={ckpt}", f"--config={config}", "--data.init_args.num_workers=0"]
    main(["index", *args, f"--out={index_dir}"])
    expected = synthetic_count(config, "test")
    assert len(load_index(index_dir)) == expected > 0
    assert f"indexed {expected} images" in capsys.readouterr().out


def synthetic_count(config: Path, split: str) -> int:
    """Records of ``split`` in a config of synthetic sources: each holds ``n`` images."""
    sources = yaml.safe_load(config.read_text())["data"]["init_args"][split]
    return sum(source["init_args"]["n"] for source in sources)


@pytest.mark.parametrize("verb", ["evaluate", "zeroshot", "index"])
def test_every_verb_reading_an_evaluation_config_parses_the_shipped_ones(verb):
    """Parsing alone (no checkpoint is read): each verb takes every file under recipes/eval/."""
    from fundus_lit.commands import evaluate, index, zeroshot

    parser = {"evaluate": evaluate, "zeroshot": zeroshot, "index": index}[verb].build_parser()
    for config in EVAL_CONFIGS:
        cfg = parser.parse_args([f"--config={config}", "--ckpt=x.ckpt", "--out=x"])
        assert cfg.data.init_args.test, config


TYPOS = {
    "top-level": (lambda c: c | {"clases": c.pop("classes")}, "clases"),
    "unused-section-key": (lambda c: c | {"zeroshot": {"renormalise": True}}, "renormalise"),
    "unused-section-value": (lambda c: c | {"probe": {"shots": "many"}}, "probe.shots"),
}


@pytest.mark.parametrize("typo", TYPOS)
def test_index_still_names_a_misspelled_evaluation_key(tmp_path, capsys, typo):
    """Accepting the evaluation sections must not mean ignoring them: a key no section knows,
    and a bad value in a section index does not use, still stop it (before any checkpoint is
    read) naming the key."""
    change, named = TYPOS[typo]
    content = yaml.safe_load((ROOT / "recipes" / "eval" / "synthetic.yaml").read_text())
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump(change(content)))
    args = [f"--ckpt={tmp_path / 'never-read.ckpt'}", f"--config={config}"]
    with pytest.raises(SystemExit) as stop:
        main(["index", *args, f"--out={tmp_path / 'index'}"])
    assert stop.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_index_names_an_unknown_evaluation_task(tmp_path, capsys):
    config = ROOT / "recipes" / "eval" / "synthetic_6class.yaml"
    args = [f"--ckpt={tmp_path / 'never-read.ckpt'}", f"--config={config}", "--tasks=zeroshoot"]
    with pytest.raises(SystemExit) as stop:
        main(["index", *args, f"--out={tmp_path / 'index'}"])
    assert stop.value.code == 2 and "zeroshoot" in capsys.readouterr().err

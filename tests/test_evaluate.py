"""``humanverse eval`` (model/evaluation/evaluate.py) and the COCO test-set script (model/evaluation/coco_testset.py).

The feature extractors are the real classes at tiny size: the zoo's tiny CLIP and tiny
YOLOS + ViTPose through the builder's stages; Inception is a tiny random TorchScript network in
clean-fid's file layout (loaded by the real ``CleanFIDInception``) or a small conv net behind the
same protocol.
"""

import json
import urllib.error

import numpy as np
import pytest
from PIL import Image

from humanverse.cli import main as cli_main
from humanverse.testing.synthetic import make_sample
from model.evaluation import evaluate as E
from model.evaluation.coco_testset import CocoTestsetConfig, build_coco_testset
from model.evaluation.metrics import PersonPose, fid_from_features, kid_x1000
from helpers import tiny_zoo_env

torch = pytest.importorskip("torch")

# torch 2.14 flags TorchScript (clean-fid's Inception format) as deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def eval_zoo(tmp_path_factory):
    """Only the three tiny models evaluation loads (the full tiny zoo takes ~30 s to build)."""
    from humanverse import zoo

    root = tmp_path_factory.mktemp("eval-zoo")
    zoo.make_tiny(root, names=["clip-vit-l14", "yolos-tiny", "vitpose-wholebody"])
    with tiny_zoo_env(root):
        yield root


def _tiny_inception_file(folder, dim: int):
    return E.write_tiny_inception(folder / E.CLEANFID_INCEPTION_FILE, dim)


class ConvFeatures:
    """A small random conv net behind the ``InceptionExtractor`` protocol."""

    name = "tiny random conv net"

    def __init__(self, dim: int = 16):
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, stride=16), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, dim))

    def __call__(self, images):
        x = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255 for im in images])).permute(0, 3, 1, 2)
        with torch.no_grad():
            return self.net(x).numpy()


def _sample_set(folder, n, sizes, seed, res=512):
    """Synthetic people at various sizes -> images in ``folder`` and test-set rows (512 frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        s = make_sample(w, h, num_persons=1 + i % 2, seed=seed + i)
        rid = f"img{i:03d}"
        s.image.save(folder / f"{rid}.png")
        g = E.crop_geometry(w, h, res)
        persons = []
        for kp, box in zip(s.keypoints, s.boxes):
            k = kp.astype(np.float64).copy()
            k[:, :2] = E.transform_keypoints(k[:, :2], g)
            inside = (k[:, 2] > 0) & (k[:, :2] >= 0).all(1) & (k[:, :2] < res).all(1)
            k[~inside] = 0
            (x0, y0), (x1, y1) = E.transform_keypoints(box.reshape(2, 2), g).clip(0, res)
            persons.append({"keypoints": k.ravel().tolist(), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": float((x1 - x0) * (y1 - y0))})
        rows.append({"id": rid, "caption": f"a person number {i}", "image": f"real/{rid}.png",
                     "width": res, "height": res, "persons": persons})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _argv(**kw) -> list[str]:
    """``humanverse eval`` arguments from keywords (``batch_size=3`` -> ``--batch-size 3``)."""
    argv = ["eval"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return argv


# ----------------------------------------------------------------------------- FID / KID / frame


def test_fid_kid_match_cleanfid_on_the_same_features():
    cleanfid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(200, 24)) * 1.3 + 0.2
    assert abs(fid_from_features(a, a)) < 1e-6
    assert fid_from_features(a, b) == pytest.approx(float(cleanfid.fid_from_feats(a, b)), rel=1e-8)
    # with subsets as large as the smaller set, every draw is a permutation, so clean-fid's unseeded
    # np.random and our seeded generator give the same KID
    kid, _ = kid_x1000(a[:150], b[:150], num_subsets=3, subset_size=1000)
    assert kid == pytest.approx(1000 * cleanfid.kernel_distance(a[:150], b[:150], num_subsets=3), rel=1e-8)


def test_cleanfid_inception_equals_cleanfid_pipeline(tmp_path):
    """Our extractor (no DataLoader) == clean-fid's ResizeDataset + InceptionV3W on the same network."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.utils import ResizeDataset

    _tiny_inception_file(tmp_path, 2048)
    files = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    ds = ResizeDataset(files, mode="clean")
    ref_model = InceptionV3W(str(tmp_path), download=False)
    with torch.no_grad():
        ref = ref_model(torch.stack([ds[i] for i in range(2)])).numpy()
    ours = E.CleanFIDInception(tmp_path / E.CLEANFID_INCEPTION_FILE, device="cpu")
    feats = ours([E.load_eval_image(f) for f in files])
    assert feats.shape == (2, 2048)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)


def test_inception_download_failure_is_one_clear_sentence(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(E.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="--inception-weights") as e:
        E.fetch_cleanfid_inception(str(tmp_path))
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_resize_center_crop_matches_hand_computation():
    rng = np.random.default_rng(0)
    land = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    g = E.crop_geometry(640, 480, 512)
    # shorter side 480 -> 512, longer int(512 * 640 / 480) = 682; left = round((682 - 512) / 2) = 85
    assert (g.resized_width, g.resized_height, g.left, g.top) == (682, 512, 85, 0)
    expected = np.asarray(land.resize((682, 512), Image.BICUBIC))[:, 85:85 + 512]
    np.testing.assert_array_equal(np.asarray(E.resize_center_crop(land)), expected)
    # portrait: 300 x 500 -> 512 x int(853.33) = 853; top = round(341 / 2) = round(170.5) = 170
    g = E.crop_geometry(300, 500, 512)
    assert (g.resized_width, g.resized_height, g.left, g.top) == (512, 853, 0, 170)
    # the same frame as torchvision's Resize(512) + CenterCrop(512) on PIL images
    tv = pytest.importorskip("torchvision.transforms")
    ref = tv.Compose([tv.Resize(512, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(512)])
    port = Image.fromarray(rng.integers(0, 256, (500, 300, 3), dtype=np.uint8))
    for im in (land, port):
        np.testing.assert_array_equal(np.asarray(E.resize_center_crop(im)), np.asarray(ref(im)))
    # keypoints: x' = x * 682/640 - 85, y' = y * 512/480
    pts = E.transform_keypoints(np.array([[320.0, 240.0], [0.0, 0.0]]), E.crop_geometry(640, 480, 512))
    np.testing.assert_allclose(pts, [[320 * 682 / 640 - 85, 256.0], [-85.0, 0.0]])
    # already 512 x 512: untouched
    sq = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(E.resize_center_crop(sq)), np.asarray(sq))


# ----------------------------------------------------------------------------- bad inputs


def _one_sentence(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_bad_folders_and_ids_fail_clearly(tmp_path):
    rows = _sample_set(tmp_path / "real", 3, [(512, 512)], seed=0)
    testset = _write_jsonl(tmp_path / "testset.jsonl", rows)
    (tmp_path / "empty").mkdir()
    cfg = E.EvalConfig(metrics=("fid",), batch_size=4)
    with pytest.raises(ValueError, match="holds no images") as e:
        E.evaluate(tmp_path / "real", tmp_path / "empty", cfg=cfg, inception=ConvFeatures())
    _one_sentence(e)
    with pytest.raises(ValueError, match="does not exist") as e:
        E.evaluate(tmp_path / "nope", tmp_path / "real", cfg=cfg, inception=ConvFeatures())
    _one_sentence(e)
    # generated folder lacking one of the three test ids
    gen = tmp_path / "gen"
    gen.mkdir()
    for r in rows[:2]:
        Image.open(tmp_path / "real" / f"{r['id']}.png").save(gen / f"{r['id']}.png")
    Image.new("RGB", (64, 64)).save(gen / "stray.png")
    with pytest.raises(ValueError, match="1 of 3 test-set ids have no generated image") as e:
        E.evaluate(tmp_path / "real", gen, testset, cfg, inception=ConvFeatures())
    _one_sentence(e)
    # allowed: evaluates the two present, ignores the stray file
    report = E.evaluate(tmp_path / "real", gen, testset, E.EvalConfig(metrics=("fid",), allow_missing=True),
                        inception=ConvFeatures())
    assert report["counts"] == {"real": 3, "generated": 2, "testset": 2, "missing": 1, "extra": 1, "persons": None}
    # paired metrics without a test set
    with pytest.raises(ValueError, match="need the test set"):
        E.evaluate(tmp_path / "real", gen, cfg=E.EvalConfig(metrics=("fid", "pose")), inception=ConvFeatures())
    with pytest.raises(ValueError, match="not understood"):
        E.EvalConfig(metrics=("fid", "is"))


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r["persons"][0].update(keypoints=r["persons"][0]["keypoints"][:-1]),
     "398 keypoint values; expected 399"),
    (lambda r: r.update(width=640), "expected 512x512"),
    (lambda r: r["persons"][0].update(bbox=[1, 2, 3]), r"expected \[x, y, w, h\]"),
    (lambda r: r.update(caption=None), "expected a string"),
    (lambda r: r.update(id=""), "has id ''"),
])
def test_testset_validation(tmp_path, mutate, match):
    rows = _sample_set(tmp_path / "real", 2, [(512, 512)], seed=0)
    mutate(rows[1])
    with pytest.raises(ValueError, match=match) as e:
        E.load_testset(_write_jsonl(tmp_path / "t.jsonl", rows))
    assert "line 2" in _one_sentence(e)


def test_testset_duplicate_ids_and_bad_json(tmp_path):
    rows = _sample_set(tmp_path / "real", 2, [(512, 512)], seed=0)
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="repeats id"):
        E.load_testset(_write_jsonl(tmp_path / "t.jsonl", rows))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        E.load_testset(tmp_path / "bad.jsonl")


def test_pose_metrics_plumbing_with_the_input_poses(tmp_path):
    """An estimator that returns each row's input poses scores AP = AR = 100 (ids and order line up)."""
    rows = _sample_set(tmp_path / "real", 4, [(512, 512), (600, 512)], seed=3)
    testset = _write_jsonl(tmp_path / "t.jsonl", rows)
    parsed = E.load_testset(testset)

    class InputPoses:
        name = "input poses"

        def __init__(self):
            self.it = iter(parsed)

        def __call__(self, images):
            return [[PersonPose(p.keypoints, p.bbox, p.area) for p in next(self.it).persons] for _ in images]

    report = E.evaluate(tmp_path / "real", tmp_path / "real", testset, E.EvalConfig(metrics=("pose",), batch_size=3),
                        pose=InputPoses())
    m = report["metrics"]
    assert m["AP"] == pytest.approx(100.0) and m["AR"] == pytest.approx(100.0)
    assert m["AP_clean"] == pytest.approx(100.0) and m["AR_clean"] == pytest.approx(100.0)
    assert report["counts"]["persons"] == sum(len(r["persons"]) for r in rows)


# ----------------------------------------------------------------------------- end to end


def test_eval_end_to_end_with_tiny_models(tmp_path, eval_zoo, capsys):
    rows = _sample_set(tmp_path / "real", 4, [(512, 512), (640, 480), (300, 500)], seed=10)
    _sample_set(tmp_path / "gen", 4, [(512, 512), (384, 384)], seed=20)  # same ids, other images
    testset = _write_jsonl(tmp_path / "testset.jsonl", rows)
    _tiny_inception_file(tmp_path, 32)
    out = tmp_path / "eval" / "report.json"
    argv = _argv(real=tmp_path / "real", generated=tmp_path / "gen", poses=testset, models="tiny", out=out,
                 device="cpu", batch_size=3, inception_weights=tmp_path / E.CLEANFID_INCEPTION_FILE)
    assert cli_main(argv) == 0  # poses estimated by the builder's pose stage, as `humanverse eval` injects it

    report = json.loads(out.read_text())
    m = report["metrics"]
    for key in ("FID", "KID_x1k", "FID_CLIP", "CLIP"):
        assert m[key] is not None and np.isfinite(m[key]), key
    for key in ("AP", "AR", "AP_clean", "AR_clean"):
        assert key in m and (m[key] is None or 0.0 <= m[key] <= 100.0), key
    assert report["tiny"] is True
    assert report["extractors"]["clip"] == "tiny:clip-vit-l14"
    # FID-CLIP on clean-fid's CLIP ViT-B/32 by default (a tiny stand-in here), named as such
    assert report["extractors"]["fid_clip"].startswith("tiny:clip-vit-b32 (random stand-in for clean-fid's CLIP ViT-B/32")
    assert report["extractors"]["pose"] == "tiny:yolos-tiny + tiny:vitpose-wholebody"
    assert report["counts"]["generated"] == 4 and report["counts"]["testset"] == 4
    assert report["paper_reference"]["FID"] == 17.18

    table = (tmp_path / "eval" / "report.md").read_text()
    printed = capsys.readouterr().out
    assert table == printed
    for value in ("17.18", "4.11", "7.82", "32.17", "30.38", "37.84", "38.84", "48.70"):
        assert value in table
    assert "HyperHuman (paper, Table 1)" in table and "this run: generated images (output not stated) (tiny models)" in table
    assert "meaningless" in table and "clean-fid's CLIP ViT-B/32" in table

    # the same folders, evaluated against themselves through the CLI entry: FID ~ 0
    code = cli_main(["eval", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "real"), "--models", "tiny",
                   "--metrics", "fid,kid,fid_clip", "--device", "cpu", "--out", str(tmp_path / "self.json"),
                   "--inception-weights", str(tmp_path / E.CLEANFID_INCEPTION_FILE), "--log-level", "WARNING"])
    assert code == 0
    self_m = json.loads((tmp_path / "self.json").read_text())["metrics"]
    assert abs(self_m["FID"]) < 1e-6 and abs(self_m["FID_CLIP"]) < 1e-6
    assert "AP" not in self_m

    # a bad input through `humanverse eval`: one logged sentence, exit code 2
    assert cli_main(["eval", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "missing"),
                   "--inception-weights", str(tmp_path / E.CLEANFID_INCEPTION_FILE)]) == 2


# ----------------------------------------------------------------------------- COCO script


def _coco_fixture(root):
    """A 4-image COCO-2014-format folder: two qualify, one has only a keypoint-less person, one a crowd."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    sizes = {1: (640, 480), 2: (300, 500), 3: (200, 200), 4: (256, 256)}
    images = []
    for i, (w, h) in sizes.items():
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "val2014" / name, quality=95)
        images.append({"id": i, "file_name": name, "width": w, "height": h})

    def kps(points):
        flat = [0.0] * 51
        for k, (x, y, v) in points.items():
            flat[3 * k:3 * k + 3] = [x, y, v]
        return flat

    anns = [
        # image 1 (640 x 480 -> 682 x 512, left 85): nose inside, left wrist at x = 10 leaves the crop
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 2, "area": 5000.0,
         "bbox": [100.0, 100.0, 200.0, 300.0], "keypoints": kps({0: (200, 150, 2), 9: (10, 300, 1)})},
        # image 1: a second person entirely left of the crop -> dropped
        {"id": 102, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 1, "area": 100.0,
         "bbox": [0.0, 0.0, 40.0, 40.0], "keypoints": kps({0: (20, 20, 2)})},
        # image 2 (portrait): one person, gets whole-body keypoints below
        {"id": 201, "image_id": 2, "category_id": 1, "iscrowd": 0, "num_keypoints": 1, "area": 2000.0,
         "bbox": [50.0, 150.0, 100.0, 200.0], "keypoints": kps({5: (100, 250, 2)})},
        # image 3: a person without keypoints only -> not in the human subset
        {"id": 301, "image_id": 3, "category_id": 1, "iscrowd": 0, "num_keypoints": 0, "area": 900.0,
         "bbox": [10.0, 10.0, 50.0, 50.0], "keypoints": kps({})},
        # image 4: a crowd region only -> not in the subset
        {"id": 401, "image_id": 4, "category_id": 1, "iscrowd": 1, "num_keypoints": 3, "area": 900.0,
         "bbox": [10.0, 10.0, 50.0, 50.0], "keypoints": kps({0: (20, 20, 2)})},
    ]
    (root / "annotations" / "person_keypoints_val2014.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    caps = [{"id": 10 + k, "image_id": i, "caption": f"caption {k} of image {i}"} for i in sizes for k in (2, 1, 3)]
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": caps}))
    wb = dict(anns[2], keypoints=kps({5: (100, 250, 2)}), foot_kpts=[0.0] * 18,
              face_kpts=[120.0, 200.0, 1.0] + [0.0] * 201, lefthand_kpts=[0.0] * 63, righthand_kpts=[0.0] * 63)
    (root / "wholebody.json").write_text(json.dumps({"annotations": [wb]}))
    return root


def test_coco_testset_on_a_synthetic_fixture(tmp_path):
    coco = _coco_fixture(tmp_path / "coco")
    out = tmp_path / "out"
    assert cli_main(["testset", "coco", "--selection", "annotations", "--coco", str(coco), "--out", str(out),
                     "--wholebody", str(coco / "wholebody.json"), "--workers", "1", "--log-level", "WARNING"]) == 0
    rows = [json.loads(line) for line in (out / "testset.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["000000000001", "000000000002"]
    r1, r2 = rows
    assert r1["caption"] == "caption 1 of image 1"  # the first by annotation id (11 < 12 < 13)
    assert len(r1["persons"]) == 1  # person 102 lies left of the crop
    kp = np.array(r1["persons"][0]["keypoints"]).reshape(133, 3)
    # COCO (200, 150) -> +0.5 -> x * 682/640 - 85, y * 512/480
    np.testing.assert_allclose(kp[0], [200.5 * 682 / 640 - 85, 150.5 * 512 / 480, 2], atol=1e-3)
    np.testing.assert_array_equal(kp[9], [0, 0, 0])  # left the crop
    assert (kp[17:, 2] == 0).all()
    x, y, w, h = r1["persons"][0]["bbox"]
    np.testing.assert_allclose([x, y, w, h], [100 * 682 / 640 - 85, 100 * 512 / 480, 200 * 682 / 640,
                                              300 * 512 / 480], atol=1e-3)
    assert r1["persons"][0]["area"] == pytest.approx(5000 * 682 / 640 * 512 / 480, rel=1e-4)
    # the portrait gets COCO-WholeBody's face point in slot 23 (300 x 500 -> 512 x 853, top 170)
    kp2 = np.array(r2["persons"][0]["keypoints"]).reshape(133, 3)
    np.testing.assert_allclose(kp2[23], [120.5 * 512 / 300, 200.5 * 853 / 500 - 170, 1], atol=1e-3)
    # the images: 512 x 512, exactly the evaluation frame of the source
    with Image.open(coco / "val2014" / "COCO_val2014_000000000001.jpg") as src:
        expected = np.asarray(E.resize_center_crop(src))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "real" / "000000000001.png")), expected)
    # the output satisfies the evaluation contract
    parsed = E.load_testset(out / "testset.jsonl")
    assert [t.image for t in parsed] == ["real/000000000001.png", "real/000000000002.png"]

    # seeded random captions, --limit and the person-count filter
    c = build_coco_testset(CocoTestsetConfig(coco=str(coco), out=str(tmp_path / "o2"), caption="random", seed=3,
                                             selection="annotations",
                                             limit=1))
    assert c["written"] == 1 and c["images_with_keypoints"] == 2
    first = json.loads((tmp_path / "o2" / "testset.jsonl").read_text())["caption"]
    build_coco_testset(CocoTestsetConfig(coco=str(coco), out=str(tmp_path / "o3"), caption="random", seed=3, limit=1,
                                         selection="annotations"))
    assert json.loads((tmp_path / "o3" / "testset.jsonl").read_text())["caption"] == first
    c = build_coco_testset(CocoTestsetConfig(coco=str(coco), out=str(tmp_path / "o4"), max_persons=1,
                                             selection="annotations"))
    assert c["written"] == 1  # image 1 has two people

    with pytest.raises(ValueError, match="does not exist; download annotations_trainval2014.zip"):
        build_coco_testset(CocoTestsetConfig(coco=str(tmp_path), out=str(tmp_path / "o5"), selection="annotations"))


def test_eval_scores_stage1_for_table1_and_refined_beside_table7(tmp_path, eval_zoo):
    """A `humanverse sample --testset` folder: stage1/ is the Table-1 row, refined/ a second row
    beside Table 7; each row names its output and extractors; the real features are computed once."""
    rows = _sample_set(tmp_path / "real", 3, [(512, 512), (640, 480)], seed=1)
    _sample_set(tmp_path / "gen" / "stage1", 3, [(512, 512)], seed=2)
    _sample_set(tmp_path / "gen" / "refined", 3, [(384, 384)], seed=3)
    testset = _write_jsonl(tmp_path / "testset.jsonl", rows)
    weights = _tiny_inception_file(tmp_path, 32)
    cfg = E.EvalConfig(models="tiny", metrics=("fid", "kid", "fid_clip", "clip"), batch_size=3, device="cpu",
                       inception_weights=str(weights), kid_subset_size=2)
    calls = []

    class CountingInception:
        name = "counting tiny inception"

        def __init__(self):
            self.inner = E.CleanFIDInception(weights, "cpu")

        def __call__(self, images):
            calls.append(len(images))
            return self.inner(images)

    report = E.evaluate_outputs(tmp_path / "real", tmp_path / "gen", testset, cfg, inception=CountingInception())
    assert [r["output"] for r in report["rows"]] == ["stage1", "refined"]
    first, second = report["rows"]
    assert report["metrics"] == first["metrics"] and first["generated_dir"].endswith("stage1")
    assert first["paper_reference"]["method"] == "HyperHuman (paper, Table 1: stage-1 RGB)"
    assert second["paper_reference"] == {"method": "HyperHuman (paper, Table 7: refiner at 512)", "FID": 12.38,
                                         "KID_x1k": 2.55, "FID_CLIP": 6.76, "CLIP": 32.23}
    assert first["metrics"]["FID"] != second["metrics"]["FID"]
    assert sum(calls) == 3 + 3 + 3  # real once, then each output
    table = E.format_table(report)
    for needle in ("this run: stage-1 RGB (LSDM) (tiny models)", "this run: refined image (stage 2) (tiny models)",
                   "12.38", "6.76", "**stage-1 RGB (LSDM)**: 3 images", "fid_clip: tiny:clip-vit-b32"):
        assert needle in table, needle
    with pytest.raises(ValueError, match="no refined/ folder"):
        E.evaluate_outputs(tmp_path / "real", tmp_path / "gen" / "stage1", testset, cfg, outputs=["refined"])
    assert [r["output"] for r in E.evaluate_outputs(tmp_path / "real", tmp_path / "gen", testset, cfg,
                                                    outputs=["refined"])["rows"]] == ["refined"]
    direct = E.evaluate_outputs(tmp_path / "real", tmp_path / "gen" / "stage1", testset, cfg)  # the folder itself
    assert direct["output"] == "stage1" and direct["paper_reference"]["FID"] == 17.18 and "rows" not in direct


def test_fid_clip_backbone_choice():
    assert E.EvalConfig().fid_clip_backbone == "vit-b32"
    with pytest.raises(ValueError, match="fid_clip_backbone must be one of vit-b32, vit-l14"):
        E.EvalConfig(fid_clip_backbone="vit-h14")


@pytest.mark.slow  # ~16 s alone, over a minute on a busy 2-core machine
def test_coco_detector_selection_runs_offline_with_tiny_models(tmp_path, eval_zoo, capsys):
    """The paper's selection (detector + pose estimator on each 512 crop) end to end through
    `humanverse testset coco` with the tiny YOLOS + ViTPose (whose random scores need every
    clearly-visible criterion relaxed); it prints the selected count beside the paper's 8,236."""
    coco = _coco_fixture(tmp_path / "coco")
    out = tmp_path / "det"
    assert cli_main(["testset", "coco", "--coco", str(coco), "--out", str(out), "--models", "tiny", "--device", "cpu",
                     "--person-score", "0", "--min-box-fraction", "0", "--min-visible-keypoints", "0",
                     "--keypoint-threshold", "0", "--caption", "longest", "--batch-size", "3",
                     "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    counts = json.loads(printed.splitlines()[1])
    assert counts["images_scanned"] == 4 and counts["paper_selected"] == 8236
    assert f"selected {counts['selected']} images" in printed and "the paper selected 8,236" in printed
    rows = E.load_testset(out / "testset.jsonl")
    assert len(rows) == counts["rows"] == counts["selected"] == counts["with_detected_person"] >= 1
    for r in rows:
        assert (out / r.image).is_file() and Image.open(out / r.image).size == (512, 512)
        assert r.caption == f"caption 1 of image {int(r.id)}"  # equally long: the first by annotation id
        assert r.persons  # estimated people, 133 keypoints each
    # the default (paper) criteria reject the tiny models' meaningless detections
    with pytest.raises(ValueError, match="no image .* has a clearly visible person"):
        E_coco = __import__("model.evaluation.coco_testset", fromlist=["x"])
        from pipelines.eval_pose import BuilderPoseEstimator

        E_coco.build_coco_testset(E_coco.CocoTestsetConfig(coco=str(coco), out=str(tmp_path / "strict")),
                                  BuilderPoseEstimator("tiny", "cpu", score_threshold=0.05))


def test_clearly_visible_criteria_and_caption_choice():
    from model.evaluation.coco_testset import CocoTestsetConfig, choose_captions, clearly_visible

    cfg = CocoTestsetConfig(coco="c", out="o")  # the defaults: score 0.5, box 5 %, 8 body joints >= 0.3
    kp = np.zeros((133, 3))
    kp[:17] = [256.0, 256.0, 0.9]
    person = {"keypoints": kp, "bbox": (100.0, 100.0, 300.0, 400.0), "score": 0.8}
    assert clearly_visible(person, cfg)
    assert not clearly_visible({**person, "score": 0.4}, cfg)
    assert not clearly_visible({**person, "bbox": (0.0, 0.0, 50.0, 50.0)}, cfg)  # < 5 % of 512²
    few = kp.copy()
    few[7:17, 2] = 0.1  # 7 visible body joints
    assert not clearly_visible({**person, "keypoints": few}, cfg)
    outside = kp.copy()
    outside[:17, 0] = 600.0  # outside the frame
    assert not clearly_visible({**person, "keypoints": outside}, cfg)
    caps = ["a man", "a man riding a horse", "a horse"]
    assert choose_captions(caps, cfg, 1) == ["a man"]
    assert choose_captions(caps, CocoTestsetConfig(coco="c", out="o", caption="longest"), 1) == ["a man riding a horse"]
    assert choose_captions(caps, CocoTestsetConfig(coco="c", out="o", caption="all"), 1) == caps
    with pytest.raises(ValueError, match="caption must be one of first, longest, all, random"):
        CocoTestsetConfig(coco="c", out="o", caption="shortest")
    with pytest.raises(ValueError, match="needs a detector \\+ pose estimator"):
        from model.evaluation.coco_testset import build_coco_testset

        build_coco_testset(cfg)

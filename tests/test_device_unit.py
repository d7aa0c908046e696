"""The device library without a serial line: contract checks, preprocessing, camera formats, the loop."""

import json
import shutil
import threading

import numpy as np
import pytest

from contract import ContractError, bundle
from device import DeviceError, app, camera
from contract.preprocess import FrameError, Preprocessor
from contract.protocol import Decoder, Encoder
from contract.runtime import Model
from device.sinks import NullSink, SerialSink
from device.sources import Frame, open_source


def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, change):
    data = json.loads((path / "model.json").read_text())
    change(data)
    (path / "model.json").write_text(json.dumps(data))


def test_bundle_errors_are_one_clear_line(digits_bundle, tmp_path):
    with pytest.raises(ContractError, match="does not exist"):
        bundle.load(tmp_path / "nope")
    b = copy_bundle(digits_bundle, tmp_path / "b")
    (b / "model.tflite").write_bytes((b / "model.tflite").read_bytes() + b"x")
    with pytest.raises(ContractError, match="sha256"):
        bundle.load(b)
    (b / "model.tflite").unlink()
    with pytest.raises(ContractError, match="model.tflite is missing"):
        bundle.load(b)


def test_model_json_rejects_unknown_keys_and_mismatches(digits_bundle, tmp_path):
    b = copy_bundle(digits_bundle, tmp_path / "b")
    edit_json(b, lambda d: d["input"].update(scael=1.0))
    with pytest.raises(ContractError, match="unknown key.*scael"):
        bundle.load(b)
    b2 = copy_bundle(digits_bundle, tmp_path / "b2")
    edit_json(b2, lambda d: d["input"].update(zero_point=d["input"]["zero_point"] + 1))
    loaded = bundle.load(b2)
    with pytest.raises(ContractError, match="zero point"):
        Model(loaded.model).check(loaded.spec)


def test_float_model_is_refused(digits_bundle, tmp_path):
    b = copy_bundle(digits_bundle, tmp_path / "b")
    data = (b / "variants" / "float32.tflite").read_bytes()
    (b / "model.tflite").write_bytes(data)
    edit_json(b, lambda d: (d["input"].update(dtype="float32", scale=0.0, zero_point=0),
                            d["output"].update(dtype="float32", scale=0.0, zero_point=0),
                            d.update(tflite_sha256=bundle.sha256(data))))
    with pytest.raises(ContractError, match="rebuild with the int8 variant"):
        bundle.load(b)


def test_spec_survives_a_json_round_trip(digits_bundle):
    spec = bundle.load(digits_bundle).spec
    assert bundle.ModelSpec.from_dict(json.loads(spec.to_json())) == spec


def test_preprocessing_matches_the_build_side_exactly(digits_bundle):
    from build_model import datasets
    from build_model.evaluate import model_inputs

    b = bundle.load(digits_bundle)
    model = Model(b.model)
    ds = datasets.load("digits", seed=0)
    pre = Preprocessor(b.spec)
    mine = np.concatenate([pre(x).copy() for x in ds.test.x])
    assert np.array_equal(mine, model_inputs(model, ds, ds.test.x))
    assert np.array_equal(pre(ds.test.x[0].astype(np.float64)), mine[:1])  # any input dtype, same bits


def test_preprocessing_resizes_converts_and_rejects(digits_bundle):
    pre = Preprocessor(bundle.load(digits_bundle).spec)
    rgb = np.full((64, 48, 3), 16, np.uint8)
    assert pre(rgb).shape == (1, 8, 8, 1)
    assert pre(np.zeros((16, 16))).shape == (1, 8, 8, 1)
    with pytest.raises(FrameError):
        pre(np.zeros((8, 8, 2)))
    with pytest.raises(FrameError):
        pre(np.zeros(10))


def _rgb_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)


def test_camera_formats_from_recorded_layouts():
    rgb = _rgb_image()
    x = np.full((16, 24, 1), 255, np.uint8)
    # the memory layouts picamera2 hands over for each format
    assert np.array_equal(camera.to_rgb(np.concatenate([rgb[..., ::-1], x], axis=2), "XRGB8888"), rgb)
    assert np.array_equal(camera.to_rgb(np.concatenate([rgb, x], axis=2), "XBGR8888"), rgb)
    assert np.array_equal(camera.to_rgb(rgb[..., ::-1].copy(), "RGB888"), rgb)
    assert np.array_equal(camera.to_rgb(rgb, "BGR888"), rgb)


def test_camera_yuv420_to_rgb():
    # a flat-colour frame: chroma subsampling loses nothing, so the round trip is close
    rgb = np.zeros((16, 24, 3), np.float32)
    rgb[...] = (200, 40, 90)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    planar = np.concatenate([y.reshape(-1), u[::2, ::2].reshape(-1), v[::2, ::2].reshape(-1)])
    frame = np.rint(planar).astype(np.uint8).reshape(24, 24)
    out = camera.to_rgb(frame, "YUV420")
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 2
    assert np.array_equal(camera.luma(frame, "YUV420")[..., 0], frame[:16])


def test_camera_without_picamera2_says_what_to_install():
    with pytest.raises(DeviceError, match="picamera2 is not installed"):
        camera.Picamera2Source(32, 32)


class FakeCamera:
    """A recorded frame standing in for a Picamera2 object (the camera was not run here)."""

    def __init__(self, frame):
        self.frame = frame

    def capture_array(self, stream):
        return self.frame


def test_camera_source_delivers_rgb_from_an_injected_camera():
    rgb = _rgb_image()
    src = camera.Picamera2Source(24, 16, "XRGB8888", camera=FakeCamera(
        np.concatenate([rgb[..., ::-1], np.zeros((16, 24, 1), np.uint8)], axis=2)))
    assert np.array_equal(next(src).data, rgb)


def test_unknown_source_and_bad_replay(digits_bundle, tmp_path):
    spec = bundle.load(digits_bundle).spec
    with pytest.raises(ContractError, match="unknown source"):
        open_source("webcam:0", spec)
    with pytest.raises(DeviceError, match="does not exist"):
        open_source(f"replay:{tmp_path / 'x.npz'}", spec)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DeviceError, match="cannot read"):
        open_source(f"replay:{tmp_path / 'bad.npz'}", spec)
    np.save(tmp_path / "flat.npy", np.zeros((5, 64)))
    with pytest.raises(DeviceError, match="not images"):
        open_source(f"replay:{tmp_path / 'flat.npy'}", spec)


def run_app(b, source, cfg, sink=None, fmt="jsonl", stop=None):
    model = Model(b.model)
    enc = Encoder(fmt, b.spec.labels)
    return app.run(model, Preprocessor(b.spec), source, sink or NullSink(), enc, cfg, stop)


def test_loop_counts_bad_frames_and_keeps_going(digits_bundle):
    b = bundle.load(digits_bundle)
    frames = [Frame(np.zeros((8, 8))), Frame(np.zeros(7)), Frame(np.full((8, 8), 16.0))]
    stats = run_app(b, iter(frames), app.RunConfig(period=0))
    assert stats.frames == 3 and stats.predictions == 2 and stats.bad_frames == 1


def test_deadline_misses_and_no_catch_up():
    assert app._advance(10.0, 1.0, 10.5) == 11.0
    assert app._advance(10.0, 1.0, 13.2) == 14.0  # after a stall: the next future tick, no burst
    assert app._advance(10.0, 0.0, 12.0) == 12.0


def test_tiny_period_counts_misses(digits_bundle):
    b = bundle.load(digits_bundle)
    src = open_source(f"replay:{digits_bundle / 'testset.npz'}", b.spec)
    stats = run_app(b, src, app.RunConfig(period=1e-7, max_frames=20))
    assert stats.frames == 20 and stats.misses == 20


def test_threshold_gives_unknown_and_smoothing(digits_bundle):
    b = bundle.load(digits_bundle)
    model = Model(b.model)
    clf = app.Classifier(model, b.spec.labels, app.RunConfig(threshold=1.1))
    raw = np.full((1, 10), -128, np.int8)
    raw[0, 3] = 127
    assert clf(raw)[0] == "unknown"
    smooth = app.Classifier(model, b.spec.labels, app.RunConfig(smoothing=2))
    other = np.full((1, 10), -128, np.int8)
    other[0, 5] = 100
    smooth(raw)
    label, score, topk, _ = smooth(other)
    assert label == "3" and [t[0] for t in topk[:2]] == ["3", "5"]


def test_loop_over_loop_url_stream_decodes(digits_bundle):
    import serial

    b = bundle.load(digits_bundle)
    port = serial.serial_for_url("loop://", timeout=0.05)
    sink = SerialSink("loop://", opener=lambda: port)
    src = open_source(f"replay:{digits_bundle / 'testset.npz'}", b.spec)
    stats = run_app(b, src, app.RunConfig(period=0, max_frames=30), sink=sink, fmt="binary")
    assert sink.flush(2.0)
    dec = Decoder("binary", b.spec.labels)
    msgs = dec.feed(port.read(100_000))
    preds = [m for m in msgs if m.type == "prediction"]
    assert [m.seq for m in preds] == list(range(30)) and dec.errors == 0
    assert msgs[-1].type == "status" and msgs[-1].frames == stats.frames == 30
    sink.close()


def test_full_queue_drops_oldest(digits_bundle):
    import serial

    gate = threading.Event()

    class SlowPort:
        def __init__(self):
            self.written = []

        def write(self, data):
            gate.wait(5)
            self.written.append(data)

        def flush(self):
            pass

        def close(self):
            pass

    port = SlowPort()
    sink = SerialSink("slow", queue_messages=4, opener=lambda: port)
    for i in range(20):
        sink.send(bytes([i]))
    assert sink.drops >= 15
    gate.set()
    assert sink.flush(2.0)
    stream = b"".join(port.written)
    assert stream.endswith(bytes([16, 17, 18, 19]))  # the newest survive, in order
    assert len(stream) + sink.drops == 20  # everything is either written or counted as dropped
    sink.close()
    assert isinstance(serial.SerialException(), OSError)


def test_third_party_int8_model_runs_from_a_hand_written_model_json(mlperf_dir, tmp_path):
    from device import thirdparty

    labels = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck".split(",")
    out = thirdparty.write(mlperf_dir / "pretrainedResnet_quant.tflite", tmp_path / "mlperf", labels, "image")
    raw = json.loads((out / "model.json").read_text())
    assert "provenance" not in raw and raw["input"]["scale"] == 1.0 and raw["input"]["zero_point"] == -128
    b = bundle.load(out)
    rng = np.random.default_rng(0)
    frames = [Frame(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)) for _ in range(5)]
    stats = run_app(b, iter(frames), app.RunConfig(period=0))
    assert stats.predictions == 5 and stats.bad_frames == 0
    # raw pixel 255 with scale 1, zero point -128 is 127: quantized, not wrapped
    assert Preprocessor(b.spec)(np.full((32, 32, 3), 255, np.uint8)).max() == 127


def test_replay_from_a_folder_of_images_in_file_order(digits_bundle, tmp_path):
    from PIL import Image

    for i, value in enumerate((0, 128, 255)):
        Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    b = bundle.load(digits_bundle)
    frames = list(open_source(f"replay:{tmp_path}", b.spec))
    assert [int(f.data.mean()) for f in frames] == [0, 128, 255] and frames[0].truth is None
    stats = run_app(b, iter(frames), app.RunConfig(period=0))
    assert stats.predictions == 3  # resized to 8x8 and converted to gray on the way

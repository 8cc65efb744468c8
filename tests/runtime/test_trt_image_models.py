"""TensorRT build settings for the image models (products: image[batch, 3, 192, 192]; expression:
face[batch, 1, 64, 64]): only the batch axis gets a range, fixed dims never become a "sequence" axis, the
ONNX files agree with their manifests, and the plan cache key ignores text-only settings.

TensorRT is not installed on the development machines, so ``_build_plan`` is driven through a fake ``trt``
module that records what it is asked to build; the real build runs where TensorRT and a GPU are.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from runtime.bundle import ModelSpec, TensorSpec, Variant, load_bundle
from runtime.errors import BundleError
from runtime.runners import _build_plan
from runtime.trt_cache import TrtBuildConfig, build_fingerprint, profile_shapes

REPO = Path(__file__).resolve().parents[2]
KIOSK = REPO / "models" / "bundles" / "kiosk"
BUNDLES = (KIOSK, REPO / "build" / "bundle-expression")


def image_spec(name: str, inp: str, shape: tuple, outputs: dict[str, int]) -> ModelSpec:
    return ModelSpec(name=name, task="image", variants={"fp32": Variant("fp32", f"{name}.onnx", 17)},
                     default_variant="fp32", inputs=(TensorSpec(inp, "float32", shape),),
                     outputs=tuple(TensorSpec(o, "float32", ("batch", n)) for o, n in outputs.items()))


# The contracts export/products.py and export/expression.py write; the tests below also read the real manifests.
PRODUCTS = image_spec("products", "image", ("batch", 3, 192, 192), {"fine_logits": 81, "coarse_logits": 43})
EXPRESSION = image_spec("expression", "face", ("batch", 1, 64, 64), {"logits": 7, "probabilities": 7})


def bundled(model: str):
    """(bundle, spec) of ``model`` from the first bundle that has it, else skip."""
    for path in BUNDLES:
        try:
            bundle = load_bundle(path, verify=False)
        except BundleError:
            continue
        if model in bundle.models:
            return bundle, bundle.model(model)
    pytest.skip(f"no bundle in {[str(p.relative_to(REPO)) for p in BUNDLES]} has the {model!r} model")


@pytest.mark.parametrize(("spec", "name", "dims"), [(PRODUCTS, "image", (3, 192, 192)),
                                                    (EXPRESSION, "face", (1, 64, 64))])
def test_only_the_batch_axis_gets_a_range(spec, name, dims):
    assert profile_shapes(spec, TrtBuildConfig()) == {name: ((1, *dims), (1, *dims), (32, *dims))}
    # Length settings are for text models: an image profile must not move with them.
    odd = TrtBuildConfig(opt_batch=4, max_batch=8, opt_length=7, max_length=512)
    assert profile_shapes(spec, odd) == {name: ((1, *dims), (4, *dims), (8, *dims))}


@pytest.mark.parametrize("model", ["products", "expression"])
def test_bundled_image_models_keep_fixed_dims(model):
    _, spec = bundled(model)
    (name, (lo, opt, hi)), = profile_shapes(spec, TrtBuildConfig(max_length=512)).items()
    assert spec.inputs[0].shape[0] == "batch" and all(isinstance(d, int) for d in spec.inputs[0].shape[1:])
    assert lo[1:] == opt[1:] == hi[1:] == spec.inputs[0].shape[1:]
    assert (lo[0], hi[0]) == (1, 32)


@pytest.mark.parametrize("model", ["products", "expression"])
def test_onnx_dims_agree_with_the_manifest(model):
    """TensorRT sets a profile for each input whose ONNX dims are dynamic (-1), using the manifest's shape: a
    dim the ONNX leaves dynamic but the manifest fixes (or the reverse) would give a wrong or missing range."""
    bundle, spec = bundled(model)
    for variant in spec.variants.values():
        graph = onnx.load(str(bundle.path(variant.file)), load_external_data=False).graph
        declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
        for value in (*graph.input, *graph.output):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert len(dims) == declared[value.name].rank, (variant.file, value.name, dims)
            for got, want in zip(dims, declared[value.name].shape, strict=True):
                assert isinstance(got, str) == isinstance(want, str), (variant.file, value.name, dims)
                if isinstance(want, int):
                    assert got == want, (variant.file, value.name, dims)


def test_image_plan_key_ignores_text_settings_but_not_real_ones():
    shapes = profile_shapes(EXPRESSION, TrtBuildConfig())
    base = build_fingerprint(shapes, "fp32", TrtBuildConfig())
    longer = TrtBuildConfig(max_length=512, opt_length=128)
    assert build_fingerprint(profile_shapes(EXPRESSION, longer), "fp32", longer) == base
    for changed in (TrtBuildConfig(max_batch=8), TrtBuildConfig(workspace_mb=2048), TrtBuildConfig(fp16=False)):
        assert build_fingerprint(profile_shapes(EXPRESSION, changed), "fp32", changed) != base, changed
    assert build_fingerprint(shapes, "fp16", TrtBuildConfig()) != base
    assert build_fingerprint(profile_shapes(PRODUCTS, TrtBuildConfig()), "fp32", TrtBuildConfig()) != base
    text = ModelSpec(name="t", task="text", variants={"fp32": Variant("fp32", "t.onnx", 17)}, default_variant="fp32",
                     inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),),
                     outputs=(TensorSpec("logits", "float32", ("batch", 3)),))
    assert build_fingerprint(profile_shapes(text, longer), "fp32", longer) != \
        build_fingerprint(profile_shapes(text, TrtBuildConfig()), "fp32", TrtBuildConfig())


# --- _build_plan through a fake TensorRT --------------------------------------------------------------------------


class FakeTrt:
    """Just enough of the tensorrt module for ``_build_plan``; records profiles and flags."""

    __version__ = "10.99.fake"
    BuilderFlag = SimpleNamespace(FP16="FP16")
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self, inputs: dict[str, tuple[int, ...]], fast_fp16: bool = False):
        self.inputs, self.fast_fp16 = inputs, fast_fp16
        self.profiles: list[dict] = []
        self.flags: list = []
        self.network_flags = None
        trt = self

        class Builder:
            platform_has_fast_fp16 = fast_fp16

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.network_flags = flags
                tensors = [SimpleNamespace(name=n, shape=s) for n, s in trt.inputs.items()]
                return SimpleNamespace(num_inputs=len(tensors), get_input=lambda i: tensors[i])

            def create_builder_config(self):
                return SimpleNamespace(set_memory_pool_limit=lambda *a: None, set_flag=trt.flags.append,
                                       add_optimization_profile=lambda p: trt.profiles.append(p.shapes))

            def create_optimization_profile(self):
                shapes: dict = {}
                return SimpleNamespace(shapes=shapes, set_shape=lambda n, lo, opt, hi: shapes.update({n: (lo, opt, hi)}))

            def build_serialized_network(self, network, config):
                return b"plan"

        self.Builder = Builder
        self.OnnxParser = lambda network, logger: SimpleNamespace(parse_from_file=lambda p: True, num_errors=0)


@pytest.mark.parametrize(("spec", "onnx_shape"), [(PRODUCTS, (-1, 3, 192, 192)), (EXPRESSION, (-1, 1, 64, 64))])
def test_build_plan_profiles_the_batch_axis_only(spec, onnx_shape):
    trt = FakeTrt({spec.inputs[0].name: onnx_shape})
    shapes = profile_shapes(spec, TrtBuildConfig())
    assert _build_plan(trt, None, Path(f"{spec.name}.onnx"), shapes, "fp32", TrtBuildConfig()) == b"plan"
    dims = onnx_shape[1:]
    assert trt.profiles == [{spec.inputs[0].name: ((1, *dims), (1, *dims), (32, *dims))}]


def test_build_plan_for_a_static_image_model_adds_no_profile():
    trt = FakeTrt({"face": (1, 1, 64, 64)})
    shapes = profile_shapes(EXPRESSION, TrtBuildConfig())
    _build_plan(trt, None, Path("expression.onnx"), shapes, "fp32", TrtBuildConfig())
    assert trt.profiles == []


def test_build_plan_refuses_an_input_the_manifest_lacks():
    trt = FakeTrt({"pixels": (-1, 1, 64, 64)})
    with pytest.raises(BundleError, match="'pixels' is not in the manifest"):
        _build_plan(trt, None, Path("expression.onnx"), profile_shapes(EXPRESSION, TrtBuildConfig()), "fp32",
                    TrtBuildConfig())


@pytest.mark.parametrize(("fast_fp16", "fp16", "weak"), [(True, None, True), (True, False, False), (False, None, False)])
def test_fp32_image_model_gets_fp16_kernels_only_when_allowed(fast_fp16, fp16, weak):
    trt = FakeTrt({"face": (-1, 1, 64, 64)}, fast_fp16=fast_fp16)
    build = TrtBuildConfig(fp16=fp16)
    _build_plan(trt, None, Path("expression.onnx"), profile_shapes(EXPRESSION, build), "fp32", build)
    assert (trt.flags == ["FP16"]) is weak
    assert trt.network_flags == (0 if weak else 1 << 1)


def test_ort_tensorrt_ep_gets_the_batch_range(tmp_path):
    from runtime.engine import Engine

    with Engine(KIOSK, providers=["cpu"], verify=False, cache_dir=tmp_path) as engine:
        spec = engine.bundle.models.get("products")
        if spec is None:
            pytest.skip("the kiosk bundle has no products model")
        opts = engine._ort_trt_options(spec)
    assert opts["trt_profile_min_shapes"] == "image:1x3x192x192"
    assert opts["trt_profile_opt_shapes"] == "image:1x3x192x192"
    assert opts["trt_profile_max_shapes"] == "image:32x3x192x192"


# --- the real build (TensorRT + GPU only) ------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize("model", ["expression", "products"])
def test_tensorrt_image_model_matches_onnxruntime(model, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs the TensorRT Python package and a GPU (not installed on this machine)")
    from runtime.runners import OrtRunner, TrtRunner

    bundle, spec = bundled(model)
    variant = spec.pick_variant(("fp32", "int8"))
    path = bundle.path(variant.file)
    size = spec.inputs[0].shape[1:]
    rng = np.random.default_rng(0)
    feeds = [{spec.inputs[0].name: rng.uniform(-1, 1, (n, *size)).astype(np.float32)} for n in (1, 5, 32)]
    with OrtRunner(path, ["CPUExecutionProvider"], spec) as ort_runner:
        want = [ort_runner.infer(f) for f in feeds]
    build = TrtBuildConfig(fp16=False)
    with TrtRunner(path, spec, tmp_path, precision=variant.precision, build=build) as trt_runner:
        for feed, expected in zip(feeds, want, strict=True):
            got = trt_runner.infer(feed)
            for name, ref in expected.items():
                rel = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
                assert got[name].shape == ref.shape and rel < 1e-2, (model, name, rel)

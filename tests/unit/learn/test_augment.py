"""DeepSpaCE's training augmentation (``stpredict.learn.augment.DeepSpaceAugment``) and its config names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from stpredict.errors import ConfigError
from stpredict.learn.augment import (
    AUGMENT_GROUPS,
    DEEPSPACE_GROUPS,
    DIHEDRAL,
    DeepSpaceAugment,
    _apply_blur,
    _apply_channel_shuffle,
    _apply_crop,
    _apply_median_blur,
    _apply_motion_blur,
    _apply_optical,
    _apply_piecewise,
    _apply_shift_scale_rotate,
    _draw_crop,
    _draw_motion_blur,
    _grid_axis,
    _hsv_to_rgb,
    _piecewise_points,
    _rgb_to_hsv,
    dihedral,
    make_augment,
    parse_augmentation,
)
from tests.conftest import train_config

torch.set_num_threads(1)
S = 32
N = 400  # images for the rate checks: a binomial(400, 0.5) lies in 200 ± 40 with p > 0.9999
HALF_OPS = ("crop", "hsv", "channel_shuffle", "rgb_shift", "contrast", "gamma", "brightness")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, side: int = S, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (bilinear upsampling of coarse noise)."""
    coarse = torch.rand(n, 3, 6, 6, generator=gen(seed))
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)


def steps_of(plan, op):
    return [s for s in plan if s.op == op]


def within(count: int, n: int, p: float, sds: float = 4.0) -> bool:
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------ module-level behaviour


def test_full_set_keeps_shape_dtype_range_and_changes_images():
    x = images(24)
    out = make_augment("deepspace")(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert int(changed.sum()) >= 20  # "random" always applies, so nearly every image changes
    assert torch.equal(x, images(24))  # the input is not modified in place


def test_deterministic_for_a_seed_and_different_across_seeds():
    x = images(16)
    aug = make_augment("deepspace")
    a, b = aug(x, gen(5)), aug(x, gen(5))
    assert torch.equal(a, b)
    c = aug(x, gen(6))
    assert not torch.allclose(a, c)


def test_every_image_gets_its_own_parameters():
    x = images(1).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = make_augment("deepspace")(x, gen(2))
    flat = out.flatten(1)
    dist = torch.cdist(flat[0::2], flat[1::2]).diagonal()  # pairs (0,1), (2,3), ...
    assert int((dist > 1e-3).sum()) >= 30


def test_none_list_is_the_identity():
    x = images(8)
    for aug in (make_augment("deepspace:none"), DeepSpaceAugment(())):
        assert torch.equal(aug(x, gen(0)), x)
    assert make_augment("none") is None


def test_group_list_is_applied_in_the_given_order():
    aug = make_augment("deepspace:flip,crop,color,random")
    assert aug.groups == ("flip", "crop", "color", "random")
    plan = aug.plan(16, S, gen(0))
    ops = [s.op for s in plan]
    assert ops[:5] == ["flip", "crop", "hsv", "channel_shuffle", "rgb_shift"]
    assert not {"contrast", "gamma", "brightness"} & set(ops)
    assert make_augment("deepspace").groups == DEEPSPACE_GROUPS
    assert make_augment("deepspace:blur,blur").groups == ("blur", "blur")


def test_resize_first_when_a_size_is_given():
    out = make_augment("deepspace:none", size=24)(images(2, side=48), gen(0))
    assert out.shape == (2, 3, 24, 24)


def test_rejects_bad_shapes():
    aug = make_augment("deepspace")
    with pytest.raises(ValueError, match="square"):
        aug(torch.rand(2, 3, 16, 20), gen(0))
    with pytest.raises(ValueError, match="float"):
        aug(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), gen(0))


# ------------------------------------------------------------------ names and config


def test_parse_names():
    assert parse_augmentation("dihedral") == ("dihedral", ())
    assert parse_augmentation(None) == ("none", ())
    assert parse_augmentation("deepspace") == ("deepspace", DEEPSPACE_GROUPS)
    assert parse_augmentation("deepspace: flip , crop") == ("deepspace", ("flip", "crop"))
    assert parse_augmentation("deepspace:none") == ("deepspace", ())
    assert set(DEEPSPACE_GROUPS) <= set(AUGMENT_GROUPS)


@pytest.mark.parametrize(
    "name, match",
    [
        ("deepspace:flip,flop", "unknown group.*'flop'"),
        ("deepspace:", "unknown group"),
        ("deepspace:none,flip", "combines 'none'"),
        ("albumentations", "unknown augmentation"),
        ("dihedral:flip", "unknown augmentation"),
    ],
)
def test_unknown_names_raise_config_errors(name, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_augment(name)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)
    with pytest.raises(ConfigError, match="invalid training setting"):
        train_config(augmentation=name)


def test_train_config_accepts_group_lists():
    assert train_config(augmentation="deepspace:flip,crop,color,random").augmentation.endswith(
        "random"
    )


def test_schema_pattern_matches_the_parser(repo):
    from snakemake.utils import validate

    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    exp = next(e for e in cfg["experiments"].values() if "train" in e)
    for good in (
        "none",
        "dihedral",
        "deepspace",
        "deepspace:flip,crop,color,random",
        "deepspace:none",
        "deepspace:" + ",".join(AUGMENT_GROUPS),
    ):
        exp["train"]["augmentation"] = good
        validate(cfg, str(repo / "workflow/schemas/config.schema.yaml"))
        parse_augmentation(good)
    from snakemake.exceptions import WorkflowError

    for bad in ("deepspace:flop", "deepspace:", "deepspace:none,flip", "deep"):
        exp["train"]["augmentation"] = bad
        with pytest.raises(WorkflowError):
            validate(cfg, str(repo / "workflow/schemas/config.schema.yaml"))
        with pytest.raises(ConfigError):
            parse_augmentation(bad)


# ------------------------------------------------------------------ probabilities


def test_each_half_transform_fires_on_about_half_the_images():
    aug = make_augment("deepspace")
    plan = aug.plan(N, S, gen(3))
    for op in HALF_OPS:
        (step,) = steps_of(plan, op)
        assert within(step.idx.numel(), N, 0.5), (op, step.idx.numel())
    (flip,) = steps_of(plan, "flip")
    for key in ("rot90", "flip", "transpose"):
        assert within(int(flip.params[key].sum()), N, 0.5), key


def test_one_of_picks_each_member_uniformly_and_random_always_applies():
    plan = make_augment("deepspace:random").plan(N * 3, S, gen(4))
    share = {
        "iaa_noise": 1 / 6,
        "gauss_noise": 1 / 6,
        "motion_blur": 1 / 9,
        "median_blur": 1 / 9,
        "blur": 1 / 9,
        "optical": 1 / 12,
        "grid": 1 / 12,
        "piecewise": 1 / 12,
        "shift_scale_rotate": 1 / 12,
    }
    assert sorted(s.op for s in plan) == sorted(share)
    covered = torch.cat([s.idx for s in plan])
    assert torch.equal(covered.sort().values, torch.arange(N * 3))  # exactly one each
    for step in plan:
        assert within(step.idx.numel(), N * 3, share[step.op]), step.op


def test_p_one_fires_always():
    plan = DeepSpaceAugment(("color", "contrast", "crop"), p=1.0).plan(20, S, gen(0))
    assert all(s.idx.numel() == 20 for s in plan)


# ------------------------------------------------------------------ parameter ranges


def test_parameter_ranges():
    plan = make_augment("deepspace:flip,crop,color,contrast,noise,blur,dist,dist,dist").plan(
        N, S, gen(7)
    )
    p = {s.op: s.params for s in plan}
    assert p["rgb_shift"]["shift"].abs().max() <= 20 / 255
    assert p["brightness"]["beta"].abs().max() <= 0.2
    assert (p["contrast"]["alpha"] - 1).abs().max() <= 0.2
    assert p["gamma"]["gamma"].min() >= 0.8 and p["gamma"]["gamma"].max() <= 1.2
    assert p["hsv"]["hue"].abs().max() <= 20 and p["hsv"]["sat"].abs().max() <= 30
    assert p["hsv"]["val"].abs().max() <= 20
    assert p["iaa_noise"]["sigma"].min() >= 0.01 and p["iaa_noise"]["sigma"].max() <= 0.05
    gs = p["gauss_noise"]["sigma"] * 255
    assert gs.min() >= math.sqrt(10) - 1e-9 and gs.max() <= math.sqrt(50) + 1e-9
    for op in ("motion_blur", "median_blur", "blur"):
        assert set(p[op]["ksize"].tolist()) <= {3, 5, 7}
    assert p["optical"]["k"].abs().max() <= 0.05 and not p["optical"]["dx"].any()
    assert p["grid"]["xsteps"].min() >= 0.7 and p["grid"]["xsteps"].max() <= 1.3
    ssr = p["shift_scale_rotate"]
    assert ssr["angle"].abs().max() <= 45 and (ssr["scale"] - 1).abs().max() <= 0.1
    assert ssr["dx"].abs().max() <= 0.0625 and ssr["dy"].abs().max() <= 0.0625
    dest = p["piecewise"]["dest"]
    assert dest.min() >= 0 and dest.max() <= S - 1


def test_crop_box_area_and_aspect():
    for side in (32, 224):
        prm = _draw_crop(2000, side, gen(8), 0.5)
        w, h = prm["w"].double(), prm["h"].double()
        assert (w >= 1).all() and (w <= side).all() and (h >= 1).all() and (h <= side).all()
        assert (prm["scale"] >= 0.5).all() and (prm["scale"] <= 1).all()
        assert (prm["ratio"] >= 3 / 4 - 1e-12).all() and (prm["ratio"] <= 4 / 3 + 1e-12).all()
        # the box is the rounded (scale x area, ratio) rectangle: area >= 0.5 up to the rounding
        assert ((w + 0.5) * (h + 0.5) >= 0.5 * side * side).all()
        assert (prm["top"] >= 0).all() and (prm["top"] + prm["h"] <= side).all()
        assert (prm["left"] >= 0).all() and (prm["left"] + prm["w"] <= side).all()
        assert (w * h < 0.9 * side * side).float().mean() > 0.5  # not all whole-image fallbacks


# ------------------------------------------------------------------ the transforms themselves


def test_flip_group_yields_all_eight_dihedral_elements():
    x = torch.rand(N, 3, 8, 8, generator=gen(0))
    aug = make_augment("deepspace:flip")
    plan = aug.plan(N, 8, gen(9))
    out = aug.apply(x, plan)
    codes = plan[0].params["code"]
    for i in range(N):
        k, f = DIHEDRAL[int(codes[i])]
        assert torch.equal(out[i], dihedral(x[i], k, f))
    assert set(codes.tolist()) == set(range(8))
    # e.g. transpose alone is the D4 element "flip, then one quarter turn"
    only_t = (
        (~plan[0].params["rot90"] | (plan[0].params["k"] == 0))
        & ~plan[0].params["flip"]
        & plan[0].params["transpose"]
    )
    i = int(torch.nonzero(only_t)[0])
    assert torch.equal(out[i], x[i].transpose(-2, -1))


def test_crop_matches_bilinear_resize_of_the_box():
    x = images(6, side=S)
    prm = _draw_crop(6, S, gen(10), 0.5)
    out = _apply_crop(x, prm)
    for i in range(6):
        t, lft, h, w = (int(prm[k][i]) for k in ("top", "left", "h", "w"))
        box = x[i : i + 1, :, t : t + h, lft : lft + w]
        ref = F.interpolate(
            box, size=(S, S), mode="bilinear", align_corners=False
        )  # cv2 half-pixel
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)


def test_channel_shuffle_is_a_permutation():
    x = images(50)
    aug = DeepSpaceAugment(("color",), p=1.0)
    plan = [s for s in aug.plan(50, S, gen(11)) if s.op == "channel_shuffle"]
    out = aug.apply(x, plan)
    perms = plan[0].params["perm"]
    for i in range(50):
        assert sorted(perms[i].tolist()) == [0, 1, 2]
        assert torch.equal(out[i], x[i, perms[i]])
    assert len({tuple(p.tolist()) for p in perms}) == 6
    assert torch.equal(
        _apply_channel_shuffle(x[:1], {"perm": torch.tensor([[2, 0, 1]])}), x[:1, [2, 0, 1]]
    )


def test_pointwise_colour_shifts_stay_in_their_ranges():
    x = torch.full((N, 3, 8, 8), 0.5)
    for group, op, check in [
        ("color", "rgb_shift", lambda d: d.abs().max() <= 20 / 255 + 1e-6),
        ("contrast", "contrast", lambda d: d.abs().max() <= 0.5 * 0.2 + 1e-6),
        ("contrast", "brightness", lambda d: d.abs().max() <= 0.2 + 1e-6),
    ]:
        aug = DeepSpaceAugment((group,), p=1.0)
        plan = [s for s in aug.plan(N, 8, gen(12)) if s.op == op]
        d = aug.apply(x, plan) - x
        assert check(d) and d.abs().max() > 0.5 * (20 / 255 if op == "rgb_shift" else 0.1), op
        assert torch.allclose(d, d[:, :, :1, :1].expand_as(d))  # one value per image/channel


def test_gamma_is_a_power():
    x = torch.linspace(0.05, 0.95, 64).reshape(1, 1, 8, 8).expand(20, 3, 8, 8)
    aug = DeepSpaceAugment(("contrast",), p=1.0)
    plan = [s for s in aug.plan(20, 8, gen(13)) if s.op == "gamma"]
    out = aug.apply(x, plan)
    gamma = torch.log(out) / torch.log(x)
    torch.testing.assert_close(
        gamma,
        plan[0].params["gamma"].float().reshape(-1, 1, 1, 1).expand_as(gamma),
        atol=1e-4,
        rtol=0,
    )


def test_hsv_round_trip_and_hue_shift():
    x = torch.rand(4, 3, 16, 16, generator=gen(14))
    torch.testing.assert_close(_hsv_to_rgb(*_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    # pure red, hue +20 OpenCV units = +40 degrees, saturation and value untouched
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 0.8
    red[:, 1] = 0.2
    red[:, 2] = 0.2
    aug = DeepSpaceAugment(("color",), p=1.0)
    steps = [s for s in aug.plan(1, 8, gen(0)) if s.op == "hsv"]
    steps[0].params.update(
        hue=torch.tensor([20.0], dtype=torch.float64),
        sat=torch.zeros(1, dtype=torch.float64),
        val=torch.zeros(1, dtype=torch.float64),
    )
    h0, s0, v0 = _rgb_to_hsv(red)
    h1, s1, v1 = _rgb_to_hsv(aug.apply(red, steps))
    torch.testing.assert_close(h1 - h0, torch.full_like(h0, 40 / 360), atol=1e-5, rtol=0)
    torch.testing.assert_close(s1, s0, atol=1e-5, rtol=0)
    torch.testing.assert_close(v1, v0, atol=1e-5, rtol=0)


def test_noises():
    x = torch.full((200, 3, 16, 16), 0.5)
    aug = make_augment("deepspace:noise")
    plan = aug.plan(200, 16, gen(15))
    out = aug.apply(x, plan)
    iaa = steps_of(plan, "iaa_noise")[0]
    d = (out - x)[iaa.idx]
    torch.testing.assert_close(d[:, 0], d[:, 1])  # one field for the three channels
    sd = d.flatten(1).std(1).double()
    torch.testing.assert_close(sd, iaa.params["sigma"], atol=0.0, rtol=0.25)
    gauss = steps_of(plan, "gauss_noise")[0]
    d = (out - x)[gauss.idx]
    assert not torch.allclose(d[:, 0], d[:, 1])
    torch.testing.assert_close(
        d.flatten(1).std(1).double(), gauss.params["sigma"], atol=0.0, rtol=0.25
    )


def _windows(x: np.ndarray, k: int, mode: str) -> np.ndarray:
    r = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode=mode)
    h, w = x.shape[-2:]
    return np.stack([xp[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)])


def test_median_and_box_blur_match_brute_force():
    x = torch.rand(3, 3, 12, 12, generator=gen(16))
    k = torch.tensor([3, 5, 7])
    med = _apply_median_blur(x, {"ksize": k}).numpy()
    box = _apply_blur(x, {"ksize": k}).numpy()
    for i, ki in enumerate(k.tolist()):
        ref = np.median(_windows(x[i : i + 1].numpy(), ki, "edge"), axis=0)  # cv2: replicated
        np.testing.assert_array_equal(med[i : i + 1], ref)
        ref = _windows(x[i : i + 1].numpy(), ki, "reflect").mean(0)  # cv2 BORDER_REFLECT_101
        np.testing.assert_allclose(box[i : i + 1], ref, atol=1e-6)


def test_median_is_chunked(monkeypatch):
    import stpredict.learn.augment as augment

    x = torch.rand(5, 3, 16, 16, generator=gen(17))
    whole = _apply_median_blur(x, {"ksize": torch.full((5,), 5)})
    monkeypatch.setattr(augment, "_MEDIAN_ELEMENTS", 3 * 16 * 16 * 25 * 2)  # 2 images a chunk
    assert torch.equal(_apply_median_blur(x, {"ksize": torch.full((5,), 5)}), whole)


def test_motion_blur_kernels_are_normalised_lines():
    prm = _draw_motion_blur(500, S, gen(18), 0.5)
    kern, k = prm["kernel"], prm["ksize"]
    torch.testing.assert_close(kern.sum((1, 2)), torch.ones(500))
    support = kern > 0
    assert (support.sum((1, 2)) >= 2).all()  # never a single point (random.sample)
    assert (support.sum((1, 2)) <= k).all()  # one pixel per step of the longer axis
    for i in range(0, 500, 50):  # inside the centred k x k box
        off = (7 - int(k[i])) // 2
        inner = support[i, off : off + int(k[i]), off : off + int(k[i])]
        assert int(inner.sum()) == int(support[i].sum())
    x = torch.rand(3, 3, 16, 16, generator=gen(19))
    out = _apply_motion_blur(x, {"ksize": k[:3], "kernel": kern[:3]})
    for i in range(3):
        ki, off = int(k[i]), (7 - int(k[i])) // 2
        w = kern[i, off : off + ki, off : off + ki].numpy().reshape(-1, 1, 1, 1, 1)
        ref = (_windows(x[i : i + 1].numpy(), ki, "reflect") * w).sum(0)  # correlation, as filter2D
        np.testing.assert_allclose(out[i : i + 1].numpy(), ref, atol=1e-5)


def test_grid_axis_matches_albumentations_loop():
    steps = torch.tensor([[1.1, 0.8, 1.25, 0.95, 1.3, 0.7]], dtype=torch.float64)
    for width in (32, 224, 30):
        x_step, xx, prev = width // 5, np.zeros(width), 0.0
        for idx in range(6):  # albumentations.augmentations.functional.grid_distortion
            start, end = idx * x_step, idx * x_step + x_step
            if end > width:
                end, cur = width, width
            else:
                cur = prev + x_step * float(steps[0, idx])
            xx[start:end] = np.linspace(prev, cur, end - start)
            prev = cur
        np.testing.assert_allclose(_grid_axis(steps, width)[0].numpy(), xx, atol=1e-9)


def test_shift_scale_rotate_geometry():
    x = images(1, side=16)
    zero = torch.zeros(1, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    same = _apply_shift_scale_rotate(x, {"angle": zero, "scale": one, "dx": zero, "dy": zero})
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    moved = _apply_shift_scale_rotate(
        x, {"angle": zero, "scale": one, "dx": one * 2 / 16, "dy": zero}
    )
    torch.testing.assert_close(moved[..., 2:], x[..., :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[..., 0], x[..., 2], atol=1e-5, rtol=0)  # reflect 101
    # 90 degrees about (W/2, H/2), as cv2.getRotationMatrix2D: a quarter turn and a pixel's shift
    turned = _apply_shift_scale_rotate(x, {"angle": one * 90, "scale": one, "dx": zero, "dy": zero})
    torch.testing.assert_close(
        turned[..., 1:, :], torch.rot90(x, 1, (-2, -1))[..., :-1, :], atol=1e-5, rtol=0
    )


def test_optical_without_distortion_is_opencvs_half_pixel_shift():
    x = images(1, side=16)
    zero = torch.zeros(1, dtype=torch.float64)
    out = _apply_optical(x, {"k": zero, "dx": zero, "dy": zero})
    ref = F.avg_pool2d(x, 2, stride=1)  # samples at (u + 0.5, v + 0.5)
    torch.testing.assert_close(out[..., :-1, :-1], ref, atol=1e-5, rtol=0)
    barrel = _apply_optical(x, {"k": zero + 0.05, "dx": zero, "dy": zero})
    assert (barrel - out).abs().max() > 1e-3


def test_piecewise_affine_of_an_affine_grid_is_that_affine_map():
    x = images(1, side=S)
    src = _piecewise_points(S)[None]
    torch.testing.assert_close(_apply_piecewise(x, {"dest": src}), x, atol=1e-5, rtol=0)
    dest = src * 0.5 + 4.0  # zoom in on [4, 20]: every triangle the same affine map
    out = _apply_piecewise(x, {"dest": dest})
    u = torch.arange(S, dtype=torch.float32) * 0.5 + 4.0
    grid = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1)[None] * (2 / (S - 1)) - 1
    ref = F.grid_sample(x, grid, mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_piecewise_moves_only_the_triangles_of_a_moved_point():
    side = 30  # control points at 0, 10, 20, 30
    x = torch.rand(1, 3, side, side, generator=gen(21))
    dest = _piecewise_points(side)[None].clone()
    dest[0, 1, 1] += torch.tensor([2.0, 1.0], dtype=torch.float64)  # point (10, 10) -> (12, 11)
    out = _apply_piecewise(x, {"dest": dest})
    torch.testing.assert_close(out[..., 10, 10], x[..., 11, 12])
    torch.testing.assert_close(out[..., 19, 19], x[..., 19, 19])  # far triangle of its cell
    torch.testing.assert_close(out[..., 5, 25], x[..., 5, 25])  # another cell
    assert (out[..., 8, 8] - x[..., 8, 8]).abs().max() > 1e-4


@pytest.mark.gpu
def test_cuda_matches_cpu_for_the_same_generator():
    x = images(64, side=48)
    aug = make_augment("deepspace:flip,crop,color,contrast,noise,blur,dist,random")
    cpu = aug(x, gen(20))
    cuda = aug(x.cuda(), gen(20)).cpu()
    torch.testing.assert_close(cuda, cpu, atol=1e-4, rtol=0)

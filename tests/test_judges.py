"""The success judges calibrated both ways on held-out scenes: the target scene passed through the
bundled model's VAE passes, the unchanged input and every wrong edit (`calibration.WRONG_EDITS`)
fails, as rendered and after the same VAE round trip."""

import numpy as np
import pytest

from diffedit_helpers.world.calibration import STRIPE_FACTORS, TRUE_CASE, WRONG_EDITS, calibration_cases, is_true_case, vae_round_trip
from diffedit_helpers.world.evaluate import held_out_edits
from diffedit_helpers.world.metrics import edit_success, lag_correlation, pattern_features, pattern_of
from diffedit_helpers.world.shapes import EDIT_KINDS, Thing, paint, shape_mask

N_TRUE, N_WRONG_VAE = 40, 12  # scenes per kind: true edits, wrong edits judged through the VAE (all are judged as rendered)
# pixel noise that the VAE averages into one flat colour near the target: judged as rendered only
VAE_AVERAGES_IT = {"40% target, 30% old, 30% a third colour"}


@pytest.fixture(scope="module")
def rates(bundled):
    edits = held_out_edits(N_TRUE, EDIT_KINDS)
    out = {}
    for (kind, case), items in calibration_cases(edits).items():
        if is_true_case(case):
            decoded = vae_round_trip(bundled, [p for _, p in items])
            out[kind, case] = (len(items), None, np.mean([edit_success(d, e) for (e, _), d in zip(items, decoded)]))
            continue
        raw = np.mean([edit_success(p, e) for e, p in items])
        few = [(e, p) for e, p in items if e.source in {x.source for x in edits[: N_WRONG_VAE * len(EDIT_KINDS)]}]
        decoded = vae_round_trip(bundled, [p for _, p in few])
        out[kind, case] = (len(items), raw, np.mean([edit_success(d, e) for (e, _), d in zip(few, decoded)]))
    for (kind, case), (n, raw, vae) in out.items():
        print(f"{kind:8s} {case:45s} n={n:3d} as rendered {'-' if raw is None else f'{raw:.0%}':>4s} through the VAE {vae:.0%}")
    return out


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_the_target_through_the_vae_passes(rates, kind):
    n, _, vae = rates[kind, TRUE_CASE]
    assert n == N_TRUE and vae >= 0.95, f"{kind}: only {vae:.0%} of the true edits pass"


@pytest.mark.parametrize("case", list(STRIPE_FACTORS))
def test_stripes_drawn_at_another_period_pass(rates, case):
    """A zebra or striped object whose stripes are 30% wider or 20% narrower than the world's is still
    striped (before the period range, 5% and 16% passed). The few that fail are small objects the VAE
    blurs off their coat colours, as it does some true targets."""
    n, _, vae = rates["pattern", case]
    assert n >= 5 and vae >= 0.85, f"{case}: only {vae:.0%} of {n} pass"


@pytest.mark.parametrize("kind,case", [(k, c) for k, cases in WRONG_EDITS.items() for c in cases])
def test_a_wrong_edit_fails(rates, kind, case):
    n, raw, vae = rates[kind, case]
    assert n >= 5, f"too few scenes to judge {case!r}"
    assert raw <= 0.05, f"{kind} / {case}: {raw:.0%} pass as rendered"
    if case not in VAE_AVERAGES_IT:
        assert vae <= 0.05, f"{kind} / {case}: {vae:.0%} pass through the VAE"


# ----------------------------------------------------------------------------- the pattern detector
@pytest.mark.parametrize("pattern", ["plain", "striped", "dotted"])
def test_pattern_detector_names_each_rendered_pattern(pattern):
    thing = Thing("square", "red", pattern, 32.0, 32.0, 40.0)
    where = shape_mask(thing, 64)
    assert pattern_of(paint(thing, 64), thing, where) == pattern


def test_pattern_detector_rejects_a_flat_tint_and_pixel_noise():
    thing = Thing("square", "blue", "striped", 32.0, 32.0, 40.0)
    where = shape_mask(thing, 64)
    tint = np.broadcast_to(paint(thing, 64)[where].mean(0), (64, 64, 3))
    assert pattern_of(tint, thing, where) is None
    rng = np.random.default_rng(0)
    noise = np.where(rng.random((64, 64, 1)) < 0.5, paint(thing, 64)[where][0], np.array([245.0, 245.0, 245.0]))
    assert pattern_of(noise, thing, where) is None


def test_pattern_features_of_stripes():
    thing = Thing("square", "red", "striped", 32.0, 32.0, 40.0)
    where = shape_mask(thing, 64)
    share = (np.all(paint(thing, 64) != paint(thing, 64)[32, 32], -1)).astype(np.float32)
    f = pattern_features(share, where)
    assert f["columns"] > 0.95 and f["rows"] < 0.05 and 0.4 < f["mean"] < 0.6
    assert lag_correlation(share.T, where.T) == pytest.approx(1.0)  # vertical stripes: the same value down a column


# ----------------------------------------------------------------------------- the whole-zebra judge
def _zebra_without(edit, parts):
    "The edit's target zebra with some of its parts (shapes.horse_part_masks) painted over by the background."
    from dataclasses import replace

    from diffedit_helpers.world.shapes import horse_part_masks, render

    img = np.asarray(render(edit.target)[0], np.float32)
    bare = np.asarray(render(replace(edit.target, things=()))[0], np.float32)
    masks = horse_part_masks(edit.target.things[edit.index], img.shape[0])
    for part in parts:
        img[masks[part]] = bare[masks[part]]
    return img


def test_whole_zebra_passes_true_zebras_and_fails_missing_parts(bundled):
    from diffedit_helpers.world.metrics import whole_zebra
    from diffedit_helpers.world.shapes import horse_scene, make_edit, render

    edits = [make_edit(horse_scene(s), "pattern") for s in range(20)]
    true = vae_round_trip(bundled, [np.asarray(render(e.target)[0]) for e in edits])
    assert np.mean([whole_zebra(d, e) for d, e in zip(true, edits)]) >= 0.95
    for parts in (["leg 2"], ["leg 4"], ["head"], ["leg 1", "leg 2", "leg 3", "leg 4"]):
        wrong = vae_round_trip(bundled, [_zebra_without(e, parts) for e in edits])
        assert not any(whole_zebra(d, e) for d, e in zip(wrong, edits)), f"a zebra without its {parts} passed"
    unchanged = [np.asarray(render(e.source)[0]) for e in edits]
    assert not any(whole_zebra(u, e) for u, e in zip(unchanged, edits))
    with pytest.raises(ValueError, match="zebra"):
        whole_zebra(unchanged[0], make_edit(horse_scene(0), "colour"))

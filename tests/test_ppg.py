"""Pseudo Prompt Generator: points, boxes and masks from hand-made class maps."""
import pytest
import torch

from escnet.modeling.esc_net.prompt_generator import PseudoPromptGenerator
from escnet.modeling.esc_net.sam_blocks import SamPromptEncoder
from escnet.utils.errors import EscnetError

GRID = 24


def _blob_map(centres, radius=3, size=GRID, high=1.0, low=0.0):
    """``size x size`` map: ``high`` inside discs around ``centres`` ((x, y) pairs), ``low`` elsewhere."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = torch.zeros(size, size, dtype=torch.bool)
    for cx, cy in centres:
        inside |= (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    return torch.where(inside, high, low), inside


def _disc(cx, cy, radius=3, size=GRID):
    return _blob_map([(cx, cy)], radius, size)[1]


@pytest.fixture
def generator():
    return PseudoPromptGenerator(num_regions=5, threshold=0.5, temperature=0.01, kmeans_iters=10)


def test_points_inside_blobs_masks_cover_them_and_regions_separate_blobs(generator):
    two_blobs, two_inside = _blob_map([(4, 4), (19, 18)])
    one_blob, one_inside = _blob_map([(12, 6)], radius=4)
    # a gentle ramp inside the blob makes one pixel the peak
    one_blob = one_blob + 0.01 * torch.linspace(0, 1, GRID).view(1, GRID) * one_inside
    prompts = generator(torch.stack([two_blobs, one_blob]))

    for index, inside in enumerate((two_inside, one_inside)):
        valid = prompts.valid[index]
        assert 1 <= int(valid.sum()) <= 5
        assert torch.equal(prompts.foreground[index], inside)  # the mask covers the blob, nothing else
        for region in range(5):
            if not valid[region]:
                continue
            x, y = prompts.points[index, region].long().tolist()
            assert inside[y, x], "pseudo point outside the blob"
            assert prompts.region_masks[index, region, y, x], "pseudo point outside its own region"
            x0, y0, x1, y1 = prompts.boxes[index, region].long().tolist()
            region_ys, region_xs = prompts.region_masks[index, region].nonzero(as_tuple=True)
            assert (x0, y0, x1, y1) == (
                int(region_xs.min()), int(region_ys.min()), int(region_xs.max()), int(region_ys.max())
            )
    # regions are disjoint, and none spans both distant blobs; each blob gets a region
    masks = prompts.region_masks[0]
    assert int(masks.sum(0).max()) == 1
    first, second = _disc(4, 4), _disc(19, 18)
    for region in masks:
        assert not ((region & first).any() and (region & second).any())
    assert any((region & first).any() for region in masks) and any((region & second).any() for region in masks)
    # the ramp's peak (rightmost column of the blob) is one of the points
    peak_x = int(one_inside.nonzero()[:, 1].max())
    assert peak_x in prompts.points[1, prompts.valid[1], 0].long().tolist()


def test_batched_equals_per_class(generator):
    torch.manual_seed(0)
    maps = torch.randn(7, GRID, GRID) * 0.05
    maps[2] = _blob_map([(3, 3), (20, 5), (10, 20)])[0]
    batched = generator(maps)
    for index in range(maps.shape[0]):
        single = generator(maps[index:index + 1])
        for field in ("points", "boxes", "valid", "region_masks"):
            assert torch.equal(getattr(batched, field)[index], getattr(single, field)[0]), field


def test_fewer_foreground_pixels_than_regions(generator):
    maps = torch.zeros(1, GRID, GRID)
    maps[0, 5, 7] = 1.0
    maps[0, 6, 7] = 0.999  # second foreground pixel (probability ratio > 0.5 at temperature 0.01)
    prompts = generator(maps)
    assert int(prompts.valid.sum()) == 2
    assert int(prompts.foreground.sum()) == 2
    valid_points = prompts.points[0, prompts.valid[0]].long().tolist()
    assert sorted(valid_points) == [[7, 5], [7, 6]]
    assert not prompts.region_masks[0, ~prompts.valid[0]].any()


def test_flat_map_spreads_regions_over_the_image(generator):
    prompts = generator(torch.zeros(1, GRID, GRID))
    assert bool(prompts.foreground.all())
    assert int(prompts.valid.sum()) == 5
    sizes = prompts.region_masks[0].flatten(1).sum(-1)
    assert int(sizes.sum()) == GRID * GRID and int(sizes.min()) > GRID * GRID // 20


def test_all_below_threshold_class_gives_invalid_regions_and_no_prompt_embeddings(generator):
    probs = torch.softmax(torch.randn(3, GRID * GRID), dim=-1)
    foreground = probs >= 0.5 * probs.amax(-1, keepdim=True)
    foreground[1] = False  # class 1: nothing above the threshold
    prompts = generator.regions_from_foreground(probs, foreground, (GRID, GRID))
    assert not prompts.valid[1].any() and not prompts.region_masks[1].any()
    assert prompts.valid[0].any() and prompts.valid[2].any()
    assert torch.equal(prompts.boxes[1], torch.zeros(5, 4))

    torch.manual_seed(0)
    encoder = SamPromptEncoder(embed_dim=16, grid_size=(GRID, GRID), mask_in_chans=8)
    sparse, dense = encoder.embed_pseudo_prompts(prompts, ("point", "box", "mask"))
    assert sparse.shape == (3, 5 + 10, 16)
    not_a_point = encoder.not_a_point_embed.weight[0]
    assert torch.equal(sparse[1], not_a_point.expand(15, 16))
    no_mask = encoder.no_mask_embed.weight[0].view(16, 1, 1).expand(16, GRID, GRID)
    assert torch.equal(dense[1], no_mask)
    assert not torch.equal(dense[0], no_mask)


def test_threshold_is_relative_to_the_peak():
    half = 0.01 * torch.log(torch.tensor(2.0))  # temperature x log(2): probability ratio 1/2
    maps = torch.full((1, 4, 4), -1.0)
    maps[0, 0, 0] = 0.0
    maps[0, 1, 1] = -half + 1e-4
    maps[0, 2, 2] = -half - 1e-4
    prompts = PseudoPromptGenerator(5, 0.5, 0.01, 5)(maps)
    foreground = prompts.foreground[0]
    assert foreground[0, 0] and foreground[1, 1] and not foreground[2, 2]
    assert int(foreground.sum()) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_regions": 0}, "NUM_REGIONS"),
        ({"threshold": 0.0}, "PPG_THRESHOLD"),
        ({"threshold": 1.5}, "PPG_THRESHOLD"),
        ({"temperature": 0.0}, "PPG_TEMPERATURE"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    settings = {"num_regions": 5, "threshold": 0.5, "temperature": 0.01, "kmeans_iters": 10}
    settings.update(kwargs)
    with pytest.raises(EscnetError, match=message):
        PseudoPromptGenerator(**settings)

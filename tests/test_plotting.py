import numpy as np
import pytest

from corrdiff_tools import plotting, quantities
from corrdiff_tools.plotting import ColourScale, Fields

N = 48
LAT, LON = np.meshgrid(np.linspace(20, 27.5, N), np.linspace(117, 125, N), indexing="ij")
SCALES = {
    "mrr": ColourScale(-10, 50, "turbo"),
    "t2m": ColourScale(20, 32, "RdYlBu_r"),
    "wind": ColourScale(0, 30, "viridis"),
}
COAST = [np.array([[120.0, 22.0], [121.0, 25.0], [122.0, 25.0]])]


def fields(seed: int) -> Fields:
    rng = np.random.default_rng(seed)
    u, v = rng.normal(0, 8, (2, N, N))
    values = quantities.to_display_units(
        rng.uniform(0, 40, (N, N)), 300 + rng.normal(0, 2, (N, N)), u, v
    )
    return Fields(values, u, v, LAT, LON)


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def maps(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_to_plot_units_converts_kelvin_and_wind_speed() -> None:
    out = quantities.to_display_units(
        np.array([10.0]), np.array([273.15, 300.0]), np.array([3.0]), np.array([4.0])
    )
    np.testing.assert_allclose(out["t2m"], [0.0, 26.85])
    np.testing.assert_allclose(out["wind"], [5.0])
    np.testing.assert_allclose(out["mrr"], [10.0])


def test_sample_figure_has_the_blogs_three_panels_with_units() -> None:
    fig = plotting.map_figure(
        fields(0), plotting.SAMPLE_PANELS, SCALES, COAST, "CorrDiff sample 0 of 4"
    )
    assert len(maps(fig)) == 3
    assert [ax.get_title() for ax in maps(fig)] == [
        "Maximum radar reflectivity",
        "2 m temperature",
        "10 m wind speed",
    ]
    assert [ax.get_ylabel() for ax in colorbars(fig)] == [
        "Radar reflectivity [dBZ]",
        "Temperature at 2 m [°C]",
        "Wind speed at 10 m [m/s]",
    ]
    assert fig.get_suptitle() == "CorrDiff sample 0 of 4"
    meshes = [ax.collections[0] for ax in maps(fig)]
    assert [m.get_cmap().name for m in meshes] == ["turbo", "RdYlBu_r", "viridis"]
    # The wind panel carries arrows; every panel carries the coastline.
    assert any(type(c).__name__ == "Quiver" for c in maps(fig)[2].collections)
    assert all(len(ax.lines) >= 1 for ax in maps(fig))
    assert type(maps(fig)[0].projection).__name__ == "LambertConformal"


def test_colour_limits_are_the_given_ones_for_every_sample() -> None:
    limits = []
    for seed in range(3):
        fig = plotting.map_figure(fields(seed), plotting.SAMPLE_PANELS, SCALES, COAST, "t")
        limits.append([ax.collections[0].get_clim() for ax in maps(fig)])
    assert limits[0] == limits[1] == limits[2] == [(-10, 50), (20, 32), (0, 30)]


def test_temperature_panel_shows_degrees_celsius() -> None:
    f = fields(1)
    t2m_k = np.full((N, N), 300.0)
    values = quantities.to_display_units(f.values["mrr"], t2m_k, f.u, f.v)
    fig = plotting.map_figure(
        Fields(values, f.u, f.v, LAT, LON), plotting.SAMPLE_PANELS, SCALES, COAST, "t"
    )
    shown = np.asarray(maps(fig)[1].collections[0].get_array())
    np.testing.assert_allclose(shown, 26.85)


def test_lowres_figure_uses_composite_reflectivity() -> None:
    f = fields(2)
    values = {**f.values, "refc": f.values["mrr"]}
    lat1, lon1 = np.linspace(19.25, 28, 36), np.linspace(116, 125.75, 40)
    small = {k: v[:36, :40] for k, v in values.items()}
    fig = plotting.map_figure(
        Fields(small, f.u[:36, :40], f.v[:36, :40], lat1, lon1),
        plotting.LOWRES_PANELS,
        SCALES,
        COAST,
        "low",
    )
    assert maps(fig)[0].get_title() == "Composite reflectivity (input)"
    assert colorbars(fig)[0].get_ylabel() == "Composite reflectivity [dBZ]"
    assert maps(fig)[0].collections[0].get_clim() == (-10, 50)  # the same scale as mrr


def test_ensemble_stats_match_numpy() -> None:
    rng = np.random.default_rng(4)
    members = {
        "mrr": rng.uniform(0, 60, (5, 8, 8)),
        "t2m": rng.normal(25, 2, (5, 8, 8)),
        "wind": rng.uniform(0, 30, (5, 8, 8)),
    }
    stats = quantities.ensemble_stats(members, {"mrr": 35.0, "wind": 17.2})
    np.testing.assert_allclose(stats.mean["t2m"], members["t2m"].mean(axis=0))
    np.testing.assert_allclose(stats.std["wind"], members["wind"].std(axis=0))
    np.testing.assert_allclose(stats.probability["mrr"], (members["mrr"] >= 35).sum(axis=0) / 5)
    assert set(stats.probability) == {"mrr", "wind"} and stats.members == 5
    exact = quantities.ensemble_stats({"mrr": np.array([[[35.0]], [[34.9]]])}, {"mrr": 35.0})
    assert float(exact.probability["mrr"][0, 0]) == 0.5  # ">=" counts the threshold itself


def test_stats_figure_panels() -> None:
    rng = np.random.default_rng(5)
    members = {
        "mrr": rng.uniform(0, 60, (4, N, N)),
        "t2m": rng.normal(25, 2, (4, N, N)),
        "wind": rng.uniform(0, 30, (4, N, N)),
    }
    stats = quantities.ensemble_stats(members, {"mrr": 35.0, "wind": 17.2, "t2m": 30.0})
    fig = plotting.stats_figure(stats, LAT, LON, SCALES, COAST, "stats")
    titles = [ax.get_title() for ax in maps(fig)]
    assert len(titles) == 9
    assert titles[:2] == [
        "Mean: maximum radar reflectivity",
        "Spread: maximum radar reflectivity",
    ]
    assert (
        "P(mrr ≥ 35 dBZ)" in titles
        and "P(wind ≥ 17.2 m/s)" in titles
        and "P(t2m ≥ 30 °C)" in titles
    )
    labels = [ax.get_ylabel() for ax in colorbars(fig)]
    assert "Standard deviation [°C]" in labels and labels.count("Probability") == 3
    prob = [ax for ax in maps(fig) if ax.get_title() == "P(mrr ≥ 35 dBZ)"][0]
    assert prob.collections[0].get_clim() == (0.0, 1.0)
    assert fig.get_suptitle() == "stats · 4 members"


def test_figures_are_not_registered_with_pyplot() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plotting.map_figure(fields(0), plotting.SAMPLE_PANELS, SCALES, COAST, "t")
    assert plt.get_fignums() == before


def test_input_arrays_are_not_modified() -> None:
    f = fields(3)
    copies = {k: v.copy() for k, v in f.values.items()}
    plotting.map_figure(f, plotting.SAMPLE_PANELS, SCALES, COAST, "t")
    for key, value in copies.items():
        np.testing.assert_array_equal(f.values[key], value)


def extent_of(ax) -> tuple[float, ...]:
    import cartopy.crs as ccrs

    return tuple(ax.get_extent(crs=ccrs.PlateCarree()))


def test_maps_show_the_grid_they_are_given_not_the_papers_whole_domain() -> None:
    lat, lon = np.meshgrid(np.linspace(22.5, 24.0, N), np.linspace(120.0, 121.5, N), indexing="ij")
    extent = plotting.grid_extent(lat, lon)
    assert extent == (120.0, 121.5, 22.5, 24.0)
    f = fields(0)
    small = Fields(f.values, f.u, f.v, lat, lon)
    fig = plotting.map_figure(small, plotting.SAMPLE_PANELS, SCALES, COAST, "t", extent=extent)
    for ax in maps(fig):
        lon0, lon1, lat0, lat1 = extent_of(ax)
        # The projected box around the grid: a little wider than it, far smaller than the paper's.
        assert 119.8 < lon0 <= 120.0 and 121.5 <= lon1 < 121.7, extent_of(ax)
        assert 22.3 < lat0 <= 22.5 and 24.0 <= lat1 < 24.2, extent_of(ax)
    stats = quantities.ensemble_stats(
        {k: np.stack([v, v]) for k, v in f.values.items()}, {"mrr": 35.0}
    )
    fig = plotting.stats_figure(stats, lat, lon, SCALES, COAST, "t", extent=extent)
    assert all(extent_of(ax)[1] < 121.7 for ax in maps(fig))
    # Without a grid's extent the paper's domain is shown, as before.
    whole = plotting.map_figure(f, plotting.SAMPLE_PANELS, SCALES, COAST, "t")
    lon0, lon1, _, _ = extent_of(maps(whole)[0])
    assert lon0 < plotting.PAPER_LON[0] + 0.1 and lon1 > plotting.PAPER_LON[1] - 0.1


def _rendered(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _blank_rows(pixels: np.ndarray) -> tuple[float, float]:
    """Fractions of the image height that are pure white above and below the content."""
    inked = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
    height = pixels.shape[0]
    return inked[0] / height, (height - 1 - inked[-1]) / height


@pytest.mark.slow  # layout, quickly: test_two_thresholds_leave_no_empty_cell_and_sit_centred
def test_figures_have_no_blank_bands_above_and_below() -> None:
    members = {"mrr": np.zeros((2, N, N)), "t2m": np.full((2, N, N), 25.0),
               "wind": np.ones((2, N, N))}  # fmt: skip
    stats = quantities.ensemble_stats(members, {"mrr": 35.0, "wind": 17.2})
    for fig in (
        plotting.map_figure(fields(0), plotting.SAMPLE_PANELS, SCALES, COAST, "t"),
        plotting.stats_figure(stats, LAT, LON, SCALES, COAST, "stats"),
    ):
        top, bottom = _blank_rows(_rendered(plotting.fit_height(fig)))
        assert top < 0.06 and bottom < 0.06, (top, bottom)  # was ~0.15 each for the maps


def test_two_thresholds_leave_no_empty_cell_and_sit_centred() -> None:
    members = {"mrr": np.zeros((2, N, N)), "t2m": np.full((2, N, N), 25.0),
               "wind": np.ones((2, N, N))}  # fmt: skip
    stats = quantities.ensemble_stats(members, {"mrr": 35.0, "wind": 17.2})
    fig = plotting.stats_figure(stats, LAT, LON, SCALES, COAST, "stats")
    _rendered(fig)
    axes = maps(fig)
    assert len(axes) == 8
    top_row = [ax.get_position() for ax in axes[:6:2]]  # the means
    probabilities = [ax.get_position() for ax in axes[6:]]
    # Centred under the three columns: symmetric about the middle column's centre.
    middle = (top_row[1].x0 + top_row[1].x1) / 2
    left, right = ((p.x0 + p.x1) / 2 for p in probabilities)
    assert abs((left + right) / 2 - middle) < 0.02
    assert left < middle < right
    # Same size as the maps above.
    assert abs(probabilities[0].width - top_row[0].width) < 0.02


def test_wind_arrows_are_scaled_by_the_colour_scale_and_stay_inside_the_data() -> None:
    strong = fields(0)
    u = np.full((N, N), 60.0)  # twice the scale's top speed: capped
    u[: N // 2] = 15.0  # half the top speed
    wind = Fields(strong.values, u, np.zeros((N, N)), LAT, LON)
    fig = plotting.map_figure(wind, plotting.SAMPLE_PANELS, SCALES, COAST, "t")
    quiver = next(c for c in maps(fig)[2].collections if type(c).__name__ == "Quiver")
    assert quiver.pivot == "middle" and quiver.scale_units == "width"
    across = len(range(plotting.ARROW_STEP // 2, N, plotting.ARROW_STEP))
    top = SCALES["wind"].vmax
    assert quiver.scale == top * across / plotting.ARROW_FILL
    lengths = np.hypot(quiver.U, quiver.V)
    assert lengths.max() == top and lengths.min() == 15.0  # capped; the rest in proportion
    # Anchors at cell centres, at least half a spacing inside the grid's edge rows/columns.
    lon, lat = quiver.X, quiver.Y
    step = plotting.ARROW_STEP
    assert np.all(lon >= LON[:, step // 2].min() - 1e-9) and np.all(lat >= LAT[step // 2].min())

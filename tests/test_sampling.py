"""Schedules, ODE solvers, re-noising and noise drawing in ``noisesearch.sampling``.

Most checks use data ``x0 ~ N(mu, diag(std^2))``, for which everything is known in closed form:
the exact denoiser is ``E[x0 | x_sigma] = mu + a std^2 / (a^2 std^2 + b^2) (x - a mu)`` and the
probability-flow ODE keeps the normalised deviation ``(x_sigma - a mu) / c`` constant, with
``c = sqrt(a^2 std^2 + b^2)`` the marginal standard deviation. So every solve has an exact end
point to measure the solvers' error against.
"""

from __future__ import annotations

import math

import pytest
import torch

from noisesearch.sampling import (
    RectifiedFlow,
    Schedule,
    VariancePreserving,
    draw_noise,
    renoise,
    solve,
    solver_nfe,
)

DTYPE = torch.float64
MU = torch.tensor([1.5, -0.7, 2.0], dtype=DTYPE)
STD = torch.tensor([0.5, 1.3, 0.8], dtype=DTYPE)

SCHEDULES = {
    "rectified_flow": RectifiedFlow(),
    "vp_scaled_linear": VariancePreserving.scaled_linear(),
}
schedules = pytest.mark.parametrize("schedule", list(SCHEDULES.values()), ids=list(SCHEDULES))


def gaussian_denoiser(schedule: Schedule):
    """The exact ``E[x0 | x_sigma]`` for ``x0 ~ N(MU, diag(STD^2))``."""

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        a, b = schedule.scales(sigma)
        return MU + a * STD**2 / (a**2 * STD**2 + b**2) * (x - a * MU)

    return denoise


def marginal_std(schedule: Schedule, sigma: float) -> torch.Tensor:
    a, b = schedule.scales(sigma)
    return torch.sqrt(a**2 * STD**2 + b**2)


def state_at(schedule: Schedule, sigma: float, z: torch.Tensor) -> torch.Tensor:
    """The point of the sigma-marginal whose normalised deviation is ``z``."""
    return schedule.scales(sigma)[0] * MU + marginal_std(schedule, sigma) * z


def exact_flow(schedule: Schedule, x: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """The exact probability-flow ODE map from level ``start`` to level ``end``."""
    z = (x - schedule.scales(start)[0] * MU) / marginal_std(schedule, start)
    return state_at(schedule, end, z)


def normal_deviations(rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, MU.numel(), dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def uniform_grid(start: float, end: float, steps: int) -> list[float]:
    return [start - (start - end) * i / steps for i in range(steps + 1)]


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """Minus the least-squares slope of log(error) against log(steps)."""
    xs, ys = [math.log(n) for n in steps], [math.log(e) for e in errors]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)
    return -slope


# The convergence grids run from pure noise (level 1) to level 0.04, not to 0: a step that ends at
# b = 0 is a first-order Euler step by design, and for VP b(sigma) ~ sqrt(sigma) near 0, so the
# ODE's right-hand side is unbounded there; both would mask the order of the interior steps.
# 0.04 also puts every grid point of 8..64 steps on a training step of the 1000-step VP schedule
# (t = 1000 - 960 i / n, an integer), as real samplers' grids are: that is where its piecewise
# log-linear alphas_cumprod has kinks, so Heun must take each one-sided derivative from the
# segment its step covers to stay second order.
CONVERGENCE_END = 0.04
CONVERGENCE_STEPS = [8, 16, 32, 64]


def solver_errors(schedule: Schedule, solver: str) -> list[float]:
    x = state_at(schedule, 1.0, normal_deviations())
    target = exact_flow(schedule, x, 1.0, CONVERGENCE_END)
    errors = []
    for steps in CONVERGENCE_STEPS:
        levels = uniform_grid(1.0, CONVERGENCE_END, steps)
        result = solve(gaussian_denoiser(schedule), x, schedule, levels, solver=solver)
        errors.append((result.x - target).abs().max().item())
    return errors


@schedules
def test_ddim_error_falls_linearly_with_steps(schedule: Schedule) -> None:
    errors = solver_errors(schedule, "ddim")
    assert min(errors) > 1e-6, errors  # far above float64 rounding: the fit measures the method
    assert 0.8 <= fitted_order(CONVERGENCE_STEPS, errors) <= 1.3, errors
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.6 <= coarse / fine <= 2.6, errors


@schedules
def test_heun_error_falls_quadratically_with_steps(schedule: Schedule) -> None:
    errors = solver_errors(schedule, "heun")
    assert min(errors) > 1e-7, errors
    assert 1.7 <= fitted_order(CONVERGENCE_STEPS, errors) <= 2.4, errors
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 <= coarse / fine <= 6.0, errors


@schedules
def test_heun_beats_ddim_at_equal_steps(schedule: Schedule) -> None:
    ddim, heun = solver_errors(schedule, "ddim"), solver_errors(schedule, "heun")
    assert all(h < d / 10 for h, d in zip(heun, ddim)), (ddim, heun)


@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.7, 0.999])
def test_vp_derivative_on_a_training_step_is_taken_on_the_side_of_the_step(sigma: float) -> None:
    # log(abar) is linear between training steps, so a one-sided difference quotient of log(a^2)
    # over less than one step is exact, and d log(a^2) / dsigma = 2 a' / a.
    schedule = VariancePreserving.scaled_linear()
    h = 0.5 / schedule.train_steps

    def log_a2(level: float) -> float:
        return 2.0 * math.log(schedule.scales(level)[0])

    below = (log_a2(sigma) - log_a2(sigma - h)) / h
    above = (log_a2(sigma + h) - log_a2(sigma)) / h
    assert abs(below - above) > 1e-3 * abs(above)  # a real kink: the sides differ
    a = schedule.scales(sigma)[0]
    assert 2 * schedule.derivatives(sigma, toward=sigma - 0.1)[0] / a == pytest.approx(below, rel=1e-7)
    assert 2 * schedule.derivatives(sigma, toward=sigma + 1e-3)[0] / a == pytest.approx(above, rel=1e-7)


@pytest.mark.parametrize("sigma", [0.0314, 0.2505, 0.5005, 0.7707, 0.9996])
@schedules
def test_derivatives_match_difference_quotients_of_scales(schedule: Schedule, sigma: float) -> None:
    h = 1e-6  # inside one VP segment (none is a multiple of 1/1000), where a and b are smooth
    (a_lo, b_lo), (a_hi, b_hi) = schedule.scales(sigma - h), schedule.scales(sigma + h)
    da, db = schedule.derivatives(sigma)
    assert da == pytest.approx((a_hi - a_lo) / (2 * h), rel=1e-6, abs=1e-9)
    assert db == pytest.approx((b_hi - b_lo) / (2 * h), rel=1e-6, abs=1e-9)


def test_rectified_flow_scales_are_one_minus_sigma_and_sigma() -> None:
    flow = RectifiedFlow()
    for sigma in [0.0, 0.125, 0.5, 0.8, 1.0]:
        assert flow.scales(sigma) == pytest.approx((1.0 - sigma, sigma), abs=1e-15)


def test_variance_preserving_scales_keep_unit_variance_and_hit_alphas_cumprod() -> None:
    vp = VariancePreserving.scaled_linear()
    assert vp.scales(0.0) == (1.0, 0.0)
    for sigma in [0.0005, 0.01, 0.123, 0.5, 0.9, 1.0]:
        a, b = vp.scales(sigma)
        assert a**2 + b**2 == pytest.approx(1.0, abs=1e-12)
        assert 0.0 < a < 1.0 and 0.0 < b < 1.0
    for i in [0, 1, 17, 499, 998, 999]:
        a, _ = vp.scales((i + 1) / vp.train_steps)
        assert a**2 == pytest.approx(vp.alphas_cumprod[i], rel=1e-12)
    # diffusers' scaled_linear: betas from 0.00085 to 0.012, linear in sqrt(beta)
    assert vp.alphas_cumprod[0] == pytest.approx(1 - 0.00085, rel=1e-12)
    assert vp.alphas_cumprod[-1] == pytest.approx(0.00466, rel=1e-3)


def test_variance_preserving_signal_falls_monotonically_with_level() -> None:
    vp = VariancePreserving.scaled_linear()
    signal = [vp.scales(i / 1000)[0] for i in range(1001)]
    assert all(hi > lo for hi, lo in zip(signal, signal[1:]))


@pytest.mark.parametrize("solver, steps", [("ddim", 2000), ("heun", 1000)])
@schedules
def test_every_solver_and_schedule_maps_normalised_noise_z_to_mu_plus_std_z(
    schedule: Schedule, solver: str, steps: int
) -> None:
    # The Gaussian ODE map sends normalised deviation z at level 1 to mu + std z at level 0,
    # whatever the schedule: rectified flow and VP must agree on the clean end point.
    z = normal_deviations(seed=1)
    x = state_at(schedule, 1.0, z)
    result = solve(gaussian_denoiser(schedule), x, schedule, schedule.levels(steps), solver=solver)
    torch.testing.assert_close(result.x, MU + STD * z, rtol=0, atol=2e-3)


def test_ddim_is_the_same_map_on_both_schedules_at_matched_signal_to_noise() -> None:
    # DDIM is Euler in (x / a, b / a), where the ODE no longer depends on the schedule; so the
    # flow run over the levels with the same b/a as a VP grid retraces the VP run exactly.
    vp, flow = SCHEDULES["vp_scaled_linear"], SCHEDULES["rectified_flow"]
    vp_levels = uniform_grid(1.0, 0.0, 25)

    def flow_level(vp_level: float) -> float:
        a, b = vp.scales(vp_level)
        return b / (a + b)  # sigma / (1 - sigma) = b / a

    flow_levels = [flow_level(level) for level in vp_levels]
    assert flow_levels[0] < 1.0 and flow_levels[-1] == 0.0
    z = normal_deviations(seed=2)
    x_vp = state_at(vp, 1.0, z)
    x_flow = x_vp * flow.scales(flow_levels[0])[0] / vp.scales(1.0)[0]
    torch.testing.assert_close(x_flow, state_at(flow, flow_levels[0], z), rtol=1e-12, atol=1e-12)

    run_vp = solve(gaussian_denoiser(vp), x_vp, vp, vp_levels, "ddim", capture=vp_levels[:-1])
    run_flow = solve(gaussian_denoiser(flow), x_flow, flow, flow_levels, "ddim", capture=flow_levels[:-1])
    torch.testing.assert_close(run_flow.x, run_vp.x, rtol=1e-10, atol=1e-10)
    assert len(run_vp.x0) == len(run_flow.x0) == 25
    for x0_vp, x0_flow in zip(run_vp.x0.values(), run_flow.x0.values()):
        torch.testing.assert_close(x0_flow, x0_vp, rtol=1e-10, atol=1e-10)
    # and the shared end point is still first-order inexact at 25 steps: the check has teeth
    assert (run_vp.x - (MU + STD * z)).abs().max() > 1e-3


RENOISE_SAMPLES = 200_000
RENOISE_X0 = torch.tensor([0.9, -1.7, 0.0, 3.0], dtype=DTYPE)


@pytest.mark.parametrize("start, end", [(0.0, 0.3), (0.2, 0.5), (0.45, 0.9), (0.3, 1.0)])
@schedules
def test_renoise_gives_the_forward_marginal_at_the_noisier_level(
    schedule: Schedule, start: float, end: float
) -> None:
    n = RENOISE_SAMPLES
    generator = torch.Generator().manual_seed(int(1000 * start + 10 * end))
    a, b = schedule.scales(start)
    a_to, b_to = schedule.scales(end)
    x = a * RENOISE_X0 + b * torch.randn(n, RENOISE_X0.numel(), dtype=DTYPE, generator=generator)
    noise = torch.randn(n, RENOISE_X0.numel(), dtype=DTYPE, generator=generator)
    y = renoise(x, schedule, start, end, noise)

    # mean a' x0 and variance b'^2, per coordinate, each within 5 standard errors
    mean, var = y.mean(dim=0), y.var(dim=0)
    torch.testing.assert_close(mean, a_to * RENOISE_X0, rtol=0, atol=5 * b_to / math.sqrt(n))
    torch.testing.assert_close(
        var, torch.full_like(var, b_to**2), rtol=0, atol=5 * b_to**2 * math.sqrt(2 / (n - 1))
    )
    # it is the forward kernel from x_s, not a fresh draw: Cov(x_s, x_s') = (a'/a) b^2
    cov = ((x - x.mean(dim=0)) * (y - mean)).sum(dim=0) / (n - 1)
    expected_cov = a_to / a * b**2
    cov_se = math.sqrt((b**2 * b_to**2 + expected_cov**2) / n)
    torch.testing.assert_close(cov, torch.full_like(cov, expected_cov), rtol=0, atol=5 * cov_se + 1e-15)


@schedules
def test_renoise_of_a_clean_sample_is_direct_noising(schedule: Schedule) -> None:
    x0 = torch.tensor([[0.25, -2.0]], dtype=DTYPE)
    noise = torch.tensor([[1.5, 0.3]], dtype=DTYPE)
    a, b = schedule.scales(0.6)
    torch.testing.assert_close(renoise(x0, schedule, 0.0, 0.6, noise), a * x0 + b * noise)


@pytest.mark.parametrize("end", [0.5, 0.4, 0.0])
@schedules
def test_renoise_refuses_a_level_that_is_not_noisier(schedule: Schedule, end: float) -> None:
    x = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(ValueError, match="noisier"):
        renoise(x, schedule, 0.5, end, torch.ones_like(x))


def test_renoise_refuses_to_start_from_pure_flow_noise() -> None:
    x = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(ValueError, match="no signal"):
        renoise(x, RectifiedFlow(), 1.0, 1.5, torch.ones_like(x))


class CountingDenoiser:
    def __init__(self, schedule: Schedule) -> None:
        self.inner, self.calls = gaussian_denoiser(schedule), 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return self.inner(x, sigma)


@pytest.mark.parametrize(
    "solver, end, expected",
    [("ddim", 0.0, 7), ("ddim", 0.2, 7), ("heun", 0.0, 13), ("heun", 0.2, 14)],
)
@schedules
def test_nfe_counts_denoiser_calls_and_matches_solver_nfe(
    schedule: Schedule, solver: str, end: float, expected: int
) -> None:
    levels = uniform_grid(1.0, end, 7)
    denoiser = CountingDenoiser(schedule)
    x = state_at(schedule, 1.0, normal_deviations(rows=5))  # a batch: one call per step, not per row
    result = solve(denoiser, x, schedule, levels, solver=solver)
    assert result.nfe == denoiser.calls == solver_nfe(schedule, levels, solver) == expected


@pytest.mark.parametrize("solver", ["ddim", "heun"])
@schedules
def test_capture_keeps_the_denoiser_output_at_the_state_reached_there(
    schedule: Schedule, solver: str
) -> None:
    levels = uniform_grid(1.0, 0.0, 20)
    x = state_at(schedule, 1.0, normal_deviations(seed=3))
    denoiser = gaussian_denoiser(schedule)
    result = solve(denoiser, x, schedule, levels, solver=solver, capture=[0.4])
    assert list(result.x0) == [pytest.approx(0.4, abs=1e-12)]
    (level,) = result.x0
    assert level == levels[12]
    reached = solve(denoiser, x, schedule, levels[:13], solver=solver).x
    torch.testing.assert_close(result.x0[level], denoiser(reached, level), rtol=1e-12, atol=1e-12)
    # the solve itself carries on unchanged to the end
    torch.testing.assert_close(result.x, solve(denoiser, x, schedule, levels, solver=solver).x)


def test_capture_snaps_to_the_nearest_step_start() -> None:
    schedule = RectifiedFlow()
    levels = uniform_grid(1.0, 0.0, 20)
    x = state_at(schedule, 1.0, normal_deviations())
    result = solve(gaussian_denoiser(schedule), x, schedule, levels, capture=[0.41, 0.0, 2.0])
    # 0 is the end, where no step starts: the last start, 0.05, is the nearest
    assert sorted(result.x0) == pytest.approx([0.05, 0.4, 1.0], abs=1e-12)


def test_draw_noise_is_reproducible_per_seed() -> None:
    first = draw_noise([3, 11, 3], (2, 5))
    again = draw_noise([3, 11, 3], (2, 5))
    assert first.shape == (3, 2, 5) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert torch.equal(first[0], first[2])  # a seed's noise does not depend on its place
    assert not torch.allclose(first[0], first[1])
    assert torch.equal(draw_noise([11], (2, 5))[0], first[1])


def test_draw_noise_honours_dtype_and_is_standard_normal() -> None:
    noise = draw_noise(list(range(8)), (50, 50), dtype=torch.float64)
    assert noise.shape == (8, 50, 50) and noise.dtype == torch.float64
    torch.testing.assert_close(noise.float(), draw_noise(list(range(8)), (50, 50)))
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 / math.sqrt(n)
    assert abs(noise.var().item() - 1.0) < 5 * math.sqrt(2 / (n - 1))
    assert draw_noise([], (4,)).shape == (0, 4)


def test_draw_noise_hands_out_its_own_tensor_in_and_out_of_inference_mode() -> None:
    """draw_noise reuses a buffer per thread for small draws: every caller still gets a tensor of
    its own, with the numbers of torch.randn per seed, whether or not inference mode is on, in
    any order of sizes, and on other threads at the same time."""
    import threading

    def expected(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

    first = draw_noise([1, 2, 3], (4, 4))
    with torch.inference_mode():
        inside = draw_noise([4, 5, 6], (4, 4))
    after = draw_noise([1, 2, 3], (4, 4))  # the buffer was filled inside inference mode meanwhile
    after.add_(1.0)  # an ordinary tensor outside inference mode: updatable in place
    assert torch.equal(first, expected([1, 2, 3], (4, 4)))
    assert torch.equal(inside, expected([4, 5, 6], (4, 4)))
    assert torch.equal(after, first + 1.0)
    assert len({t.data_ptr() for t in (first, inside, after)}) == 3
    big = draw_noise([7, 8], (4, 64, 1025))  # over the kept size: drawn apart, not kept
    assert torch.equal(big, expected([7, 8], (4, 64, 1025)))
    assert torch.equal(draw_noise([1, 2, 3], (4, 4)), first)

    found: dict[int, bool] = {}

    def draw(worker: int) -> None:
        seeds = [worker * 100 + i for i in range(5)]
        found[worker] = all(torch.equal(draw_noise(seeds, (8,)), expected(seeds, (8,))) for _ in range(50))

    threads = [threading.Thread(target=draw, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == {w: True for w in range(4)}


def test_heun_on_a_flow_starts_from_pure_noise_at_level_one() -> None:
    flow = RectifiedFlow()
    z = normal_deviations(seed=4)
    x = state_at(flow, 1.0, z)  # b = 1, a = 0: the state is all noise
    result = solve(gaussian_denoiser(flow), x, flow, flow.levels(50), solver="heun")
    assert torch.isfinite(result.x).all()
    torch.testing.assert_close(result.x, MU + STD * z, rtol=0, atol=1e-3)


def test_ddim_step_on_a_flow_is_the_euler_update() -> None:
    flow = RectifiedFlow()
    x = normal_deviations(rows=6, seed=5)

    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:  # any prediction at all
        return 0.7 * torch.tanh(x) + sigma

    sigma, sigma_next = 0.63, 0.41
    x0 = denoiser(x, sigma)
    eps = (x - (1 - sigma) * x0) / sigma
    expected = x + (sigma_next - sigma) * (eps - x0)
    result = solve(denoiser, x, flow, [sigma, sigma_next], solver="ddim")
    torch.testing.assert_close(result.x, expected, rtol=1e-12, atol=1e-12)
    assert result.nfe == 1


@pytest.mark.parametrize("levels", [[1.0], [0.5, 0.5], [0.2, 0.6], [1.0, 0.5, 0.7]])
def test_solve_refuses_levels_that_do_not_decrease(levels: list[float]) -> None:
    with pytest.raises(ValueError, match="decreasing"):
        solve(gaussian_denoiser(RectifiedFlow()), torch.zeros(1, 3, dtype=DTYPE), RectifiedFlow(), levels)


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown solver"):
        solve(gaussian_denoiser(RectifiedFlow()), torch.zeros(1, 3), RectifiedFlow(), [1.0, 0.0], "euler")
    with pytest.raises(ValueError, match="unknown solver"):
        solver_nfe(RectifiedFlow(), [1.0, 0.0], "dpm")

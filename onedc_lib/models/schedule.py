"""The SD-1.5 noise schedule and the one-step epsilon -> x0 conversion of the generator."""
import torch

ONE_STEP_TIMESTEP = 999


def sd15_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> torch.Tensor:
    """alpha_bar table of the "scaled_linear" schedule, in float32 as diffusers' schedulers build it.

    Built in float32 on purpose: the release reads alpha_bar_999 from that table (0.00466009508818388
    as float64), and x0 scales eps errors by about 14.6, so the table value itself must match.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def eps_to_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), evaluated in float64 (as the release) and cast back."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x_t.device)
    x0 = (x_t.double() - torch.sqrt(1 - a) * eps.double()) / torch.sqrt(a)
    return x0.to(x_t.dtype)

//! Host side of the route kernel: validate, allocate, launch.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernel::route_kernel;
use crate::buffer::{expect_len, expect_positive};
use crate::plane::has_planes_of_32;
use crate::{InvalidValue, KernelError, RoutingPolicy};

/// Most slots (experts per token) the route kernel keeps in registers.
pub const MAX_SLOTS: usize = 8;
/// Units per cube of the route kernel.
const CUBE_UNITS: usize = 256;
/// Experts each member of a token's team reads at least (when E allows a team of several).
const EXPERTS_PER_MEMBER: usize = 8;
/// In a batch large enough to fill the device, also at least this many experts per member and
/// slot: merging two members' lists costs slots^2 steps, so more slots call for fewer, busier
/// members (on an H100, E=64 top-8 at T=65536: 77 us with 8 members, 33 us with 2; E=256 top-8
/// at T=16384: 93 us with 32, 31 us with 8).
const EXPERTS_PER_MEMBER_AND_SLOT: usize = 4;
/// Units (tokens x team) below which a batch cannot fill the device: its teams are as large as
/// E allows, which shortens each token's chain (E=256 top-8 at T=32: 11.6 us with 32 members,
/// 12.9 us with 8).
const SMALL_BATCH_UNITS: usize = 8192;
/// Largest team of units routing one token (a plane on every supported device).
const MAX_TEAM: usize = 32;

/// The routing decision of `num_tokens` tokens, in device buffers (the device form of
/// [`RoutedTokens`](super::reference::RoutedTokens)).
#[derive(Clone, Debug)]
pub struct RoutedOnDevice {
    /// Chosen expert of each slot, most probable first; -1 where unused. `[T, slots]` of `I`
    pub expert_ids: Handle,
    /// Renormalised weight of each slot, 0 where unused. `[T, slots]` of `F`
    pub weights: Handle,
    /// Experts used by each token. `[T]` of `I`
    pub token_k: Handle,
    /// Tokens T.
    pub num_tokens: usize,
    /// Slots per token (`policy.max_slots()`).
    pub slots: usize,
}

impl RoutedOnDevice {
    /// Uninitialised output buffers for `num_tokens` tokens routed by `policy`.
    pub fn empty<R: Runtime, F: CubeElement, I: CubeElement>(
        client: &ComputeClient<R>,
        num_tokens: usize,
        policy: &RoutingPolicy,
    ) -> Self {
        let slots = policy.max_slots();
        Self {
            expert_ids: client.empty(num_tokens * slots * size_of::<I>()),
            weights: client.empty(num_tokens * slots * size_of::<F>()),
            token_k: client.empty(num_tokens * size_of::<I>()),
            num_tokens,
            slots,
        }
    }
}

/// Routes `logits` (`[num_tokens, num_experts]` of `F`, contiguous) with `policy`.
pub fn route<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    num_tokens: usize,
    num_experts: usize,
    policy: &RoutingPolicy,
) -> Result<RoutedOnDevice, KernelError> {
    check::<R, F>(client, logits, num_tokens, num_experts, policy)?;
    let routed = RoutedOnDevice::empty::<R, F, I>(client, num_tokens, policy);
    launch::<R, F, I>(client, logits, &routed, num_experts, policy);
    Ok(routed)
}

/// Like [`route`], into caller-provided buffers (which tests poison first).
pub fn route_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    routed: &RoutedOnDevice,
    num_experts: usize,
    policy: &RoutingPolicy,
) -> Result<(), KernelError> {
    validate_into::<R, F, I>(client, logits, routed, num_experts, policy)?;
    launch::<R, F, I>(client, logits, routed, num_experts, policy);
    Ok(())
}

/// Checks the arguments of [`route_into`] (also those of the fused routing stage).
pub(crate) fn validate_into<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    routed: &RoutedOnDevice,
    num_experts: usize,
    policy: &RoutingPolicy,
) -> Result<(), KernelError> {
    check::<R, F>(client, logits, routed.num_tokens, num_experts, policy)?;
    let slots = routed.slots;
    expect_len(
        &routed.expert_ids,
        "expert_ids",
        routed.num_tokens * slots,
        size_of::<I>(),
    )?;
    expect_len(
        &routed.weights,
        "weights",
        routed.num_tokens * slots,
        size_of::<F>(),
    )?;
    expect_len(
        &routed.token_k,
        "token_k",
        routed.num_tokens,
        size_of::<I>(),
    )?;
    if routed.slots != policy.max_slots() {
        return Err(KernelError::from(InvalidValue::new(
            "routed.slots",
            routed.slots,
            format!("must equal the policy's slots ({})", policy.max_slots()),
        )));
    }
    Ok(())
}

/// Units routing one token: a power of two, such that each reads `EXPERTS_PER_MEMBER` experts or
/// more (E = 8: 1, E = 64: 8, E = 256: 32), and in a large batch also
/// `EXPERTS_PER_MEMBER_AND_SLOT` per slot or more (E = 64: 2 with 8 slots; E = 256: 8 with 8).
pub(crate) fn team_size(num_tokens: usize, num_experts: usize, slots: usize) -> usize {
    let team_of = |per_member: usize| {
        let members = (num_experts / per_member).max(1);
        (1usize << members.ilog2()).min(MAX_TEAM)
    };
    let widest = team_of(EXPERTS_PER_MEMBER);
    if num_tokens * widest <= SMALL_BATCH_UNITS {
        return widest;
    }
    team_of(EXPERTS_PER_MEMBER.max(EXPERTS_PER_MEMBER_AND_SLOT * slots))
}

fn check<R: Runtime, F: CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    num_tokens: usize,
    num_experts: usize,
    policy: &RoutingPolicy,
) -> Result<(), KernelError> {
    expect_positive(&[("num_tokens", num_tokens), ("num_experts", num_experts)])?;
    policy
        .validate(num_experts)
        .map_err(|e| e.within("policy"))?;
    if !policy.decides_per_token() {
        return Err(KernelError::Unsupported(format!(
            "{policy}: expert choice ranks tokens across the batch; the route kernel decides per token"
        )));
    }
    if policy.max_slots() > MAX_SLOTS {
        return Err(KernelError::Unsupported(format!(
            "{} slots per token (the route kernel keeps at most {MAX_SLOTS})",
            policy.max_slots()
        )));
    }
    let max_cubes = client.properties().hardware.max_cube_count.0 as usize;
    if (num_tokens * team_size(num_tokens, num_experts, policy.max_slots())).div_ceil(CUBE_UNITS)
        > max_cubes
    {
        return Err(KernelError::Unsupported(format!(
            "num_tokens = {num_tokens} is too many for one launch on this device ({max_cubes} cubes)"
        )));
    }
    Ok(expect_len(
        logits,
        "logits",
        num_tokens * num_experts,
        size_of::<F>(),
    )?)
}

/// Launches the route kernel into `routed`, whose buffers [`validate_into`] has checked.
pub(crate) fn launch<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    logits: &Handle,
    routed: &RoutedOnDevice,
    num_experts: usize,
    policy: &RoutingPolicy,
) {
    let num_tokens = routed.num_tokens;
    let slots = routed.slots;
    let team = team_size(num_tokens, num_experts, slots);
    let cubes = (num_tokens * team).div_ceil(CUBE_UNITS) as u32;
    // SAFETY: every buffer was sized from (num_tokens, num_experts, slots) by `check` and
    // `RoutedOnDevice::empty`; the kernel reads only `[0, T * E)` and writes only inside them.
    unsafe {
        route_kernel::launch_unchecked::<F, I, R>(
            client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            ArrayArg::from_raw_parts(logits.clone(), num_tokens * num_experts),
            ArrayArg::from_raw_parts(routed.expert_ids.clone(), num_tokens * slots),
            ArrayArg::from_raw_parts(routed.weights.clone(), num_tokens * slots),
            ArrayArg::from_raw_parts(routed.token_k.clone(), num_tokens),
            num_tokens,
            policy.mass_limit().unwrap_or(0.0) as f32,
            num_experts,
            slots,
            team,
            CUBE_UNITS,
            policy.mass_limit().is_some(),
            has_planes_of_32(client),
        );
    }
}

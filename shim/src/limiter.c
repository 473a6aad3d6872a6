/*
 * Seam for the SM-core limiter (issue 4). Launch hooks call vgpu_limiter_before_launch() only
 * while vgpu_limiter_active is nonzero; nothing sets it yet, so launches are never delayed and
 * the region's limiter fields (core_cap, throttled_ns, ...) stay as the plugin wrote them.
 */
#include "vgpu_internal.h"

void vgpu_limiter_before_launch(void)
{
    /* Issue 4 implements the feedback controller here. */
}

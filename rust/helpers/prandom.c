// SPDX-License-Identifier: GPL-2.0

#include <linux/prandom.h>

__rust_helper void rust_helper_prandom_seed_state(struct rnd_state *state, u64 seed)
{
	prandom_seed_state(state, seed);
}

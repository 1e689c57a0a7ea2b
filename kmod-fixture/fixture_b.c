// SPDX-License-Identifier: GPL-2.0-or-later
/* Module "fixture_b": SystemTap 4.x transport fixture. */
#define STP_GEN 4
#include "stp_fixture.c"

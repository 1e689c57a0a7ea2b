// SPDX-License-Identifier: GPL-2.0-or-later
/* Module "pmod5": SystemTap 5.x transport fixture. */
#define STP_GEN 5
#include "stp_fixture.c"

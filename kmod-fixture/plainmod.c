// SPDX-License-Identifier: GPL-2.0-or-later
/* plainmod: a harmless module without any SystemTap transport. */
#include <linux/module.h>
#include <linux/init.h>

static int __init plainmod_init(void)
{
	return 0;
}

static void __exit plainmod_exit(void)
{
}

module_init(plainmod_init);
module_exit(plainmod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A module that is not a SystemTap module");

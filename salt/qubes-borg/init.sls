# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg
# ==========
# dom0 part of the qubes-borg setup: the dedicated template (qubes-borg.clone), the qubes
# sys-backup-mnt-dvm, sys-backup-mnt, sys-backup and ssh-backup (qubes-borg.create) and the
# qrexec allow policy for their names (qubes-borg.policy). The packages inside the template come
# from qubes-borg.install, which runs in the template, not in dom0.
#
# Settings: pillar key `qubes-borg` (/srv/pillar/base/qubes-borg/init.sls).
# Execute (both parts, dom0 first):
#   sudo qubesctl top.enable qubes-borg
#   sudo qubesctl --targets=tpl-qubes-borg state.apply
#   sudo qubesctl top.disable qubes-borg
# or this part only:
#   sudo qubesctl state.sls qubes-borg
##

include:
  - qubes-borg.clone
  - qubes-borg.create
  - qubes-borg.policy

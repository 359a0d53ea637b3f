# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg
# ==========
# dom0 part of the qubes-borg setup: the dedicated template (qubes-borg.clone), the qubes
# sys-backup-mnt-dvm, sys-backup-mnt, sys-backup and ssh-backup (qubes-borg.create) and the
# qrexec allow policy for their names (qubes-borg.policy) and, when the pillar names a server,
# dom0's backup.conf (qubes-borg.config). The packages inside the template come from
# qubes-borg.install, which runs in the template, and the server's destination file from
# qubes-borg.destination, which runs in sys-backup.
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
  - qubes-borg.config

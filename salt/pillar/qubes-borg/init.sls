# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
#
# Settings of the qubes-borg Salt formula (/srv/formulas/base/qubes-borg-formula/qubes-borg).
# Keys you leave out keep the defaults of qubes-borg/map.jinja, shown in the comments below.
# This file is not replaced by package upgrades.
#
# qubes-borg:
#   template:
#     name: tpl-qubes-borg           dedicated template, cloned from source
#     source: fedora-43-minimal      a Fedora template (qubes-borg ships RPMs)
#     label: black
#     fromrepo: ""                   dnf repository id that carries qubes-borg, or empty
#     rpm: ""                        or: absolute path of the RPM copied into the template
#     packages:                      extra packages for a minimal template
#       - qubes-core-agent-networking
#   sys-backup-mnt-dvm:              disposable template, no network
#     name: sys-backup-mnt-dvm
#     label: black
#   sys-backup-mnt:                  named disposable, no network: mounts and runs borg
#     name: sys-backup-mnt
#     label: black
#   sys-backup:                      the networked qube: ssh to the borg server
#     name: sys-backup
#     label: orange
#     netvm: "*default*"             or the name of a netvm
#   ssh-backup:                      vault with the ssh key, no network
#     name: ssh-backup
#     label: black

qubes-borg: {}

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
#     source: ""                     empty: fedora-42-minimal on Qubes 4.2, fedora-43-minimal on
#                                    4.3; or e.g. debian-13-minimal
#     label: black
#     fromrepo: ""                   extra dnf repository id to enable when installing from
#                                    repositories; the newest package file copied into
#                                    /var/lib/qubes-borg/packages in the template wins over them
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
#   server:                          the borg server (nothing is configured while host is "")
#     destination: borg              sys-backup: /etc/qubes-borg/destinations/borg.conf
#     host: ""                       e.g. xyz123.repo.borgbase.com
#     user: ""
#     port: 22
#     host_keys: []                  e.g. ["ssh-ed25519 AAAA..."] (ssh-keyscan without the host)
#     agent: default                 split-SSH key set in ssh-backup, "" for none
#     remote_path: ""                borg on the server, if not `borg`
#     path: ./repo                   repository path on the server
#   backup:                          dom0 /etc/qubes-borg/backup.conf, written with a server
#     timer: false                   true: enable and start qvm-backup-borg.timer
#     options: {}                    e.g. {keep_daily: 7, keep_weekly: 4, qubes: [work, vault]}

qubes-borg: {}

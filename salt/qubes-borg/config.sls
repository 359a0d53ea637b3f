# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.config
# =================
# dom0, when the pillar names a server (qubes-borg:server:host): writes
# /etc/qubes-borg/backup.conf for qvm-backup-borg (docs/USAGE.md) with
# repository = ssh://DESTINATION/PATH and the pillar's other backup.conf keys, root-only (0600),
# and, with qubes-borg:backup:timer true, enables and starts qvm-backup-borg.timer. The
# destination itself is written in sys-backup by qubes-borg.destination.
# Without a server in the pillar it does nothing.
#
# Pillar: qubes-borg:server, qubes-borg:backup
# Execute:
#   sudo qubesctl state.sls qubes-borg.config
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- from "qubes-borg/owner.jinja" import foreign with context %}
{%- set sv = qb.server %}
{%- if foreign %}

include:
  - qubes-borg.refuse
{%- elif sv.host %}
{%- set lines = [
      '# qvm-backup-borg configuration, written by the qubes-borg Salt formula (pillar qubes-borg).',
      '# Edit the pillar, not this file: the next qubesctl run rewrites it.',
      'repository = ssh://' ~ sv.destination ~ '/' ~ sv.path,
    ] %}
{%- if qb['sys-backup-mnt'].name != 'sys-backup-mnt' %}{% do lines.append('disposable = ' ~ qb['sys-backup-mnt'].name) %}{% endif %}
{%- for key, value in qb.backup.options|dictsort %}
  {%- for v in (value if value is sequence and value is not string else [value]) %}
    {%- do lines.append(key ~ ' = ' ~ ('yes' if v is sameas true else 'no' if v is sameas false else v)) %}
  {%- endfor %}
{%- endfor %}

qubes-borg-backup-conf:
  file.managed:
    - name: /etc/qubes-borg/backup.conf
    - user: root
    - group: root
    - mode: '0600'
    - makedirs: True
    - follow_symlinks: False
    - contents: {{ (lines|join('\n') ~ '\n')|tojson }}
{%- if qb.backup.timer %}

qubes-borg-timer:
  service.running:
    - name: qvm-backup-borg.timer
    - enable: True
    - require:
      - file: qubes-borg-backup-conf
{%- endif %}
{%- else %}

qubes-borg-config-none:
  test.nop:
    - name: "qubes-borg: no server in the pillar (qubes-borg:server:host), so no backup.conf is written"
{%- endif %}

# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.destination
# ======================
# Runs inside sys-backup (not in dom0) when the pillar names a server (qubes-borg:server:host):
# writes the qubes-borg.Ssh destination file NAME.conf (docs/PROTOCOL.md, "Destination
# configuration") under /rw/bind-dirs/etc/qubes-borg/destinations, the persistent copy that the
# package's bind-dirs drop-in mounts on /etc/qubes-borg at boot (so it is right whether or not
# the mount is already there; restart sys-backup once after the package first arrives).
#
# Pillar: qubes-borg:server
# Execute:
#   sudo qubesctl --skip-dom0 --targets=sys-backup state.sls qubes-borg.destination
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- set sv = qb.server %}
{%- if grains['nodename'] != 'dom0' and sv.host %}
{%- set lines = [
      '# qubes-borg destination ' ~ sv.destination ~ ', written by the qubes-borg Salt formula (pillar qubes-borg:server)',
      'host = ' ~ sv.host,
      'user = ' ~ sv.user,
      'port = ' ~ sv.port,
    ] %}
{%- if sv.remote_path %}{% do lines.append('remote-path = ' ~ sv.remote_path) %}{% endif %}
{%- for k in sv.host_keys %}{% do lines.append('host-key = ' ~ k) %}{% endfor %}
{%- if sv.agent %}{% do lines.append('agent = ' ~ sv.agent) %}{% endif %}

qubes-borg-destination-dir:
  file.directory:
    - name: /rw/bind-dirs/etc/qubes-borg/destinations
    - user: root
    - group: root
    - dir_mode: '0755'
    - makedirs: True

qubes-borg-destination:
  file.managed:
    - name: /rw/bind-dirs/etc/qubes-borg/destinations/{{ sv.destination }}.conf
    - user: root
    - group: root
    - mode: '0644'
    - follow_symlinks: False
    - contents: {{ (lines|join('\n') ~ '\n')|tojson }}
    - require:
      - file: qubes-borg-destination-dir
{%- endif %}

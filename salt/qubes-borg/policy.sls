# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.policy
# =================
# Writes the qrexec allow rules of qubes-borg for the qube names in the pillar to
# /etc/qubes/policy.d/70-qubes-borg.policy.
#
# One source of truth: the rules are the project's policy/70-qubes-borg.policy, which the dom0
# package also installs at that path and ships here as files/70-qubes-borg.policy. This state
# only replaces the default qube names (whole policy tokens, target=NAME and default_target=NAME)
# by the pillar's.
# With the default names it writes the packaged file unchanged; with other names the file
# differs from the package's copy (rpm -V shows it; an upgrade keeps it and saves the new
# version as .rpmnew, as for any edited %config(noreplace) file: rerun this state then).
# The default deny (80-qubes-borg.policy) comes from the package only.
#
# Pillar: qubes-borg:<role>:name
# Execute:
#   sudo qubesctl state.sls qubes-borg.policy
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- set rename = {
      'sys-backup-mnt': qb['sys-backup-mnt'].name,
      'sys-backup': qb['sys-backup'].name,
      'ssh-backup': qb['ssh-backup'].name,
    } %}
{%- set packaged = salt['cp.get_file_str']('salt://qubes-borg/files/70-qubes-borg.policy') %}
{%- if not packaged %}
  {{- raise('qubes-borg.policy: salt://qubes-borg/files/70-qubes-borg.policy is missing; reinstall qubes-borg-dom0') }}
{%- endif %}
{%- set lines = [] %}
{%- for line in packaged.splitlines() %}
  {%- set tokens = line.split() %}
  {%- if line.lstrip().startswith('#') or not tokens %}
    {%- do lines.append(line) %}
  {%- else %}
    {%- set out = [] %}
    {%- for tok in tokens %}
      {%- if tok in rename %}
        {%- do out.append(rename[tok]) %}
      {%- elif tok.startswith('target=') and tok[7:] in rename %}
        {%- do out.append('target=' ~ rename[tok[7:]]) %}
      {%- elif tok.startswith('default_target=') and tok[15:] in rename %}
        {%- do out.append('default_target=' ~ rename[tok[15:]]) %}
      {%- else %}
        {%- do out.append(tok) %}
      {%- endif %}
    {%- endfor %}
    {%- do lines.append(line if out == tokens else out|join('  ')) %}
  {%- endif %}
{%- endfor %}

qubes-borg-policy:
  file.managed:
    - name: /etc/qubes/policy.d/70-qubes-borg.policy
    - user: root
    - group: qubes
    - mode: '0664'
    - contents: {{ (lines|join('\n') ~ '\n')|tojson }}

# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.install
# ==================
# Runs inside the dedicated template (not in dom0): installs the VM package qubes-borg (its
# dependencies bring borgbackup, openssh-clients and qrexec) and what a minimal template lacks.
# sys-backup-mnt, sys-backup and ssh-backup get the software from here after their next start.
#
# Pillar: qubes-borg:template:name, :fromrepo, :rpm, :packages
# Execute:
#   sudo qubesctl --skip-dom0 --targets=tpl-qubes-borg state.sls qubes-borg.install
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- if grains['nodename'] != 'dom0' %}
{%- if grains['os_family'] == 'RedHat' %}

qubes-borg-package:
  pkg.installed:
  {%- if qb.template.rpm %}
    - sources:
      - qubes-borg: {{ qb.template.rpm|tojson }}
  {%- else %}
    - name: qubes-borg
    {%- if qb.template.fromrepo %}
    - fromrepo: {{ qb.template.fromrepo|tojson }}
    {%- endif %}
  {%- endif %}

{%- if qb.template.packages %}

qubes-borg-template-packages:
  pkg.installed:
    - pkgs: {{ qb.template.packages|tojson }}
{%- endif %}

{%- else %}

qubes-borg-template-not-fedora:
  test.fail_without_changes:
    - name: "qubes-borg: the template {{ grains['id'] }} is {{ grains['os'] }}; qubes-borg ships RPMs only, so base the template on Fedora (pillar qubes-borg:template:source)"
{%- endif %}
{%- endif %}

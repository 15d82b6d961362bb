# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """Attributes of the modules that change a Linux node: full check and diff mode.

    Use it after C(ansible.builtin.action_common_attributes), which describes the attributes.
    """

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    details: Reports what would change (RV(ignore:changed), the predicted values) and changes nothing.
  diff_mode:
    support: full
  platform:
    platforms: [linux]
"""

"""Ground-floor helpers every floor may use (see ``DESIGN.md``)."""

from leanvision.utils.modules import first_conv_name, replace_modules

__all__ = ["first_conv_name", "replace_modules"]

"""Target devices: profiles (``profile``), runners that measure on them (``runners``), the
measuring process (``harness``) and latency prediction without a device (``predict``)."""

from edgeslim.targets.profile import DeviceProfile, list_profiles, load_profile
from edgeslim.targets.runners import measure

__all__ = ["DeviceProfile", "list_profiles", "load_profile", "measure"]

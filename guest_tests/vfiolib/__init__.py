"""A pure-Python (ctypes) library for the VFIO and iommufd uAPI, run inside lab guests."""

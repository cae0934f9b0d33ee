"""Getting an export onto a device: adb to an Android phone."""

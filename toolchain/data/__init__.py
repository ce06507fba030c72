"""Images in and out: real image folders and archives, calibration sets (.npz) and the forms a user may give them in."""

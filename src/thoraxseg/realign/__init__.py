"""Label realignment: detect, estimate and undo a rigid transform applied to one organ's label."""

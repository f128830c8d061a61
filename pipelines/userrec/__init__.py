"""The PixRec-style user model: sequences, towers and objective, the userrec stage."""

"""The trainer: grows a student policy from market feedback and promotes it over the teacher."""

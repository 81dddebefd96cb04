//! (Tests of this format come with it.)

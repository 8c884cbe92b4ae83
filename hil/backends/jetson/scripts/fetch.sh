# The folder $1 as a tar stream on standard output (nothing when it is absent).
cd "$1" 2>/dev/null && exec tar -cf - . 2>/dev/null

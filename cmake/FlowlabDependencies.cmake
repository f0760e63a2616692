# Finds flowlab's dependencies, all from Debian's packages (scripts/install-deps.sh installs them).
find_package(dnnl CONFIG REQUIRED)            # libdnnl-dev (oneDNN 2.6, OpenMP runtime)
find_package(TBB CONFIG REQUIRED)             # libtbb-dev
find_package(nlohmann_json 3 CONFIG REQUIRED) # nlohmann-json3-dev
find_package(Boost 1.74 REQUIRED COMPONENTS program_options)  # libboost-dev, libboost-program-options-dev (the CLI)
find_package(OpenMP REQUIRED)                 # oneDNN's thread pool is OpenMP's
find_package(PNG REQUIRED)                    # libpng-dev: sample grids
find_package(ZLIB REQUIRED)                   # zlib1g-dev: gzip'd IDX datasets
find_package(Threads REQUIRED)

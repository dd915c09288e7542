# escape=`
# Kiln recipe, Windows Server {{ltsc}} with the {{port}} port: Cygwin for the
# build environment, opam for Windows, then the compiler switch. Parent
# pinned by digest; rendered bytes are part of the build key.
FROM {{parent}}@{{parent_digest}} AS opam
SHELL ["powershell", "-NoProfile", "-Command", "$ErrorActionPreference = 'Stop';"]
RUN Invoke-WebRequest -UseBasicParsing https://www.cygwin.com/setup-x86_64.exe -OutFile C:\setup-x86_64.exe; `
    Start-Process -Wait C:\setup-x86_64.exe -ArgumentList '--quiet-mode','--no-desktop','--no-admin', `
      '--root','C:\cygwin64','--site','https://mirrors.kernel.org/sourceware/cygwin/', `
      '--packages','make,diffutils,patch,unzip,git,curl,rsync,mingw64-x86_64-gcc-core,mingw64-x86_64-gcc-g++'; `
    Remove-Item C:\setup-x86_64.exe
RUN Invoke-WebRequest -UseBasicParsing `
      https://github.com/ocaml/opam/releases/download/{{opam_version}}/opam-{{opam_version}}-x86_64-windows.exe `
      -OutFile C:\Windows\opam.exe
RUN opam init -y --bare --cygwin-location=C:\cygwin64 `
      https://github.com/ocaml/opam-repository.git#{{opam_repository_commit}}

FROM opam AS compiler
RUN opam switch create -y {{ocaml_series}} --packages={{opam_packages}},system-mingw,ocaml-env-mingw64; `
    opam clean -a -c -s --logs
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}/{{port}}"
ENTRYPOINT ["opam", "exec", "--"]

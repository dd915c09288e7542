# escape=`
# Kiln recipe, Windows Server {{ltsc}} with the mingw port: the ocaml/opam
# layout of docker-base-images (e18903f): opam 2.2 to 2.5 and opam-dev built
# from source in Cygwin, `opam.exe` linking the default (2.2), OPAMROOT
# C:\opam\.opam, opam-repository checked out at the pinned commit and the
# compiler switch.
# Rendered per target; the rendered bytes are part of the build key. Parent
# pinned by digest. Downloads come from Kiln's sources server
# ({{sources_url}}), Cygwin's mirror and Microsoft's hosts only.
# Deliberate differences from upstream are `# difference(<name>)` comments,
# known by name to tests/recipes_upstream.rs.
# difference(no-winget): upstream installs winget from its GitHub release
# (unpinned: `latest`) to install Git for Windows from winget's catalogue;
# Kiln installs neither: Cygwin's git serves opam, and nothing else in the
# image needs Git for Windows.

FROM {{parent}}@{{parent_digest}} AS opam-builder
USER ContainerAdministrator
RUN for /f "tokens=1,2,*" %a in ('reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path ^| findstr /r "\\$"') do `
          for /f "delims=" %l in ('cmd /v:on /c "set v=%c&& echo !v:~0,-1!"') do `
            reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path /t REG_EXPAND_SZ /f /d "%l"
# Cygwin, the build environment opam for Windows uses, from its installer
# and mirror (the distro's own hosts).
ENV CYGWIN="nodosfilewarning winsymlinks:native"
RUN for /f "tokens=1,2,*" %a in ('reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path ^| findstr /r "^[^H]"') do `
        reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path /t REG_EXPAND_SZ /f /d "C:\cygwin64\bin;%c"
ADD ["https://www.cygwin.com/setup-x86_64.exe", "C:\\cygwin64\\setup-x86_64.exe"]
# difference(cygsympathy-from-sources): upstream downloads cygsympathy (which
# fixes the ACLs of Cygwin's postinstall files) from the head of its GitHub
# repository; Kiln takes the two files of a pinned commit from the sources server.
RUN mkdir C:\cygwin64\lib\cygsympathy && mkdir C:\cygwin64\etc\postinstall `
 && curl.exe -fsSL -o C:\cygwin64\lib\cygsympathy\cygsympathy.cmd {{sources_url}}/cygsympathy.cmd `
 && curl.exe -fsSL -o C:\cygwin64\lib\cygsympathy\cygsympathy {{sources_url}}/cygsympathy.sh `
 && mklink C:\cygwin64\etc\postinstall\zp_zcygsympathy.sh C:\cygwin64\lib\cygsympathy\cygsympathy
# difference(opam-from-release-tarballs): curl, to fetch the tarballs.
RUN C:\cygwin64\setup-x86_64.exe --quiet-mode --no-shortcuts --no-startmenu --no-desktop --only-site `
      --local-package-dir C:\TEMP\cache --root C:\cygwin64 --site https://mirrors.kernel.org/sourceware/cygwin/ `
      --symlink-type=native --packages curl,diffutils,git,make,mingw64-i686-gcc-g++,mingw64-x86_64-gcc-core,mingw64-x86_64-gcc-g++,patch && `
  powershell -Command "Remove-Item 'C:\TEMP' -Recurse"
# Windows ltsc2019 (not Windows Server) gets Cygwin's DLL rebased without
# ASLR, as upstream (`aslr_state`, `run_peflags`; vars.cygwin_aslr_off).
RUN if {{cygwin_aslr_off}}==true C:\cygwin64\bin\peflags -d0 C:\cygwin64\bin\cygwin1.dll
RUN awk -i inplace "/(^#)|(^$)/{print;next}{$4=""noacl,""$4; print}" C:\cygwin64\etc\fstab
ENV HOME="C:\cygwin64\home\opam"
RUN C:\cygwin64\bin\bash.exe --login -c "git config --global user.email 'docker@example.com' && git config --global user.name 'Docker' && git config --system core.longpaths true"
# Stage: opam 2.2 to 2.5 and opam-dev for Windows, built from source in Cygwin.
# difference(opam-from-release-tarballs): upstream clones github.com/ocaml/opam
# and builds the heads of its branches; Kiln builds the opam-full release
# tarballs (sha256 in versions/sources.yaml; vendored dependencies, the
# bootstrap compiler and flexdll inside) from the sources server.
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-bootstrap && cd /tmp/opam-bootstrap && curl -fsSL -o /tmp/opam-full-2.5.2.tar.gz {{sources_url}}/opam-full-2.5.2.tar.gz && tar -xzf /tmp/opam-full-2.5.2.tar.gz --strip-components=1 && rm /tmp/opam-full-2.5.2.tar.gz && sed -i \"s/make -j[0-9]*/make -j$NUMBER_OF_PROCESSORS/g\" shell/bootstrap-ocaml.sh && make compiler"
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-build-2.2 && cd /tmp/opam-build-2.2 && curl -fsSL -o /tmp/opam-full-2.2.1.tar.gz {{sources_url}}/opam-full-2.2.1.tar.gz && tar -xzf /tmp/opam-full-2.2.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.2.1.tar.gz && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH ./configure --enable-cold-check --with-private-runtime --with-vendored-deps --with-0install-solver && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH make && make install && mv /usr/local/bin/opam.exe /usr/local/bin/opam-2.2.exe && cd / && rm -rf /tmp/opam-build-2.2"
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-build-2.3 && cd /tmp/opam-build-2.3 && curl -fsSL -o /tmp/opam-full-2.3.0.tar.gz {{sources_url}}/opam-full-2.3.0.tar.gz && tar -xzf /tmp/opam-full-2.3.0.tar.gz --strip-components=1 && rm /tmp/opam-full-2.3.0.tar.gz && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH ./configure --enable-cold-check --with-private-runtime --with-vendored-deps --with-0install-solver && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH make && make install && mv /usr/local/bin/opam.exe /usr/local/bin/opam-2.3.exe && cd / && rm -rf /tmp/opam-build-2.3"
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-build-2.4 && cd /tmp/opam-build-2.4 && curl -fsSL -o /tmp/opam-full-2.4.1.tar.gz {{sources_url}}/opam-full-2.4.1.tar.gz && tar -xzf /tmp/opam-full-2.4.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.4.1.tar.gz && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH ./configure --enable-cold-check --with-private-runtime --with-vendored-deps --with-0install-solver && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH make && make install && mv /usr/local/bin/opam.exe /usr/local/bin/opam-2.4.exe && cd / && rm -rf /tmp/opam-build-2.4"
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-build-2.5 && cd /tmp/opam-build-2.5 && curl -fsSL -o /tmp/opam-full-2.5.2.tar.gz {{sources_url}}/opam-full-2.5.2.tar.gz && tar -xzf /tmp/opam-full-2.5.2.tar.gz --strip-components=1 && rm /tmp/opam-full-2.5.2.tar.gz && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH ./configure --enable-cold-check --with-private-runtime --with-vendored-deps --with-0install-solver && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH make && make install && mv /usr/local/bin/opam.exe /usr/local/bin/opam-2.5.exe && cd / && rm -rf /tmp/opam-build-2.5"
# difference(opam-dev-is-a-release): upstream's opam-dev is the moving head of
# master; Kiln's is the newest opam release past 2.5, with a published sha256.
RUN C:\cygwin64\bin\bash.exe --login -c "mkdir -p /tmp/opam-build-dev && cd /tmp/opam-build-dev && curl -fsSL -o /tmp/opam-full-2.6.1.tar.gz {{sources_url}}/opam-full-2.6.1.tar.gz && tar -xzf /tmp/opam-full-2.6.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.6.1.tar.gz && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH ./configure --enable-cold-check --with-private-runtime --with-vendored-deps --with-0install-solver && env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH make && make install && mv /usr/local/bin/opam.exe /usr/local/bin/opam-dev.exe && cd / && rm -rf /tmp/opam-build-dev"

FROM {{parent}}@{{parent_digest}} AS opam
USER ContainerAdministrator
LABEL distro_style="windows"
RUN for /f "tokens=1,2,*" %a in ('reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path ^| findstr /r "\\$"') do `
          for /f "delims=" %l in ('cmd /v:on /c "set v=%c&& echo !v:~0,-1!"') do `
            reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path /t REG_EXPAND_SZ /f /d "%l"
# The Visual C++ runtime, from Microsoft.
ADD ["https://aka.ms/vs/17/release/vc_redist.x64.exe", "C:\\TEMP\\"]
RUN C:\TEMP\vc_redist.x64.exe /install /passive /norestart /log C:\TEMP\vc_redist.log && `
  powershell -Command "Remove-Item 'C:\TEMP' -Recurse"
# Cygwin, the build environment opam for Windows uses, from its installer
# and mirror (the distro's own hosts).
ENV CYGWIN="nodosfilewarning winsymlinks:native"
RUN for /f "tokens=1,2,*" %a in ('reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path ^| findstr /r "^[^H]"') do `
        reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path /t REG_EXPAND_SZ /f /d "C:\cygwin64\bin;%c"
ADD ["https://www.cygwin.com/setup-x86_64.exe", "C:\\cygwin64\\setup-x86_64.exe"]
# difference(cygsympathy-from-sources): upstream downloads cygsympathy (which
# fixes the ACLs of Cygwin's postinstall files) from the head of its GitHub
# repository; Kiln takes the two files of a pinned commit from the sources server.
RUN mkdir C:\cygwin64\lib\cygsympathy && mkdir C:\cygwin64\etc\postinstall `
 && curl.exe -fsSL -o C:\cygwin64\lib\cygsympathy\cygsympathy.cmd {{sources_url}}/cygsympathy.cmd `
 && curl.exe -fsSL -o C:\cygwin64\lib\cygsympathy\cygsympathy {{sources_url}}/cygsympathy.sh `
 && mklink C:\cygwin64\etc\postinstall\zp_zcygsympathy.sh C:\cygwin64\lib\cygsympathy\cygsympathy
RUN C:\cygwin64\setup-x86_64.exe --quiet-mode --no-shortcuts --no-startmenu --no-desktop --only-site `
      --local-package-dir C:\TEMP\cache --root C:\cygwin64 --site https://mirrors.kernel.org/sourceware/cygwin/ `
      --symlink-type=native --packages curl,diffutils,git,m4,make,mingw64-x86_64-gcc-core,patch,perl,rsync,unzip && `
  powershell -Command "Remove-Item 'C:\TEMP' -Recurse"
# Windows ltsc2019 (not Windows Server) gets Cygwin's DLL rebased without
# ASLR, as upstream (`aslr_state`, `run_peflags`; vars.cygwin_aslr_off).
RUN if {{cygwin_aslr_off}}==true C:\cygwin64\bin\peflags -d0 C:\cygwin64\bin\cygwin1.dll
RUN awk -i inplace "/(^#)|(^$)/{print;next}{$4=""noacl,""$4; print}" C:\cygwin64\etc\fstab
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\Opam.Runtime.amd64", "C:\\Opam.Runtime.amd64"]
RUN move C:\Opam.Runtime.amd64 C:\cygwin64\usr\local\bin
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\opam-2.2.exe", "C:\\opam-2.2.exe"]
RUN move C:\opam-2.2.exe C:\cygwin64\usr\local\bin
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\opam-2.3.exe", "C:\\opam-2.3.exe"]
RUN move C:\opam-2.3.exe C:\cygwin64\usr\local\bin
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\opam-2.4.exe", "C:\\opam-2.4.exe"]
RUN move C:\opam-2.4.exe C:\cygwin64\usr\local\bin
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\opam-2.5.exe", "C:\\opam-2.5.exe"]
RUN move C:\opam-2.5.exe C:\cygwin64\usr\local\bin
COPY --from=opam-builder ["C:\\cygwin64\\usr\\local\\bin\\opam-dev.exe", "C:\\opam-dev.exe"]
RUN move C:\opam-dev.exe C:\cygwin64\usr\local\bin
RUN mklink C:\cygwin64\usr\local\bin\opam.exe C:\cygwin64\usr\local\bin\opam-2.2.exe
RUN for /f "tokens=1,2,*" %a in ('reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path ^| findstr /r "^[^H]"') do `
        reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment" /V Path /t REG_EXPAND_SZ /f /d "C:\cygwin64\usr\local\bin;C:\cygwin64\bin;%c"
WORKDIR C:\cygwin64\home\opam
ENV HOME="C:\cygwin64\home\opam"
RUN C:\cygwin64\bin\bash.exe --login -c "git config --global user.email 'docker@example.com' && git config --global user.name 'Docker' && git config --system core.longpaths true && git config --global --add safe.directory /home/opam/opam-repository"
# difference(opam-repository-from-bundle): upstream copies its build context,
# a checkout of opam-repository; Kiln clones the sources server's bundle of
# the pinned commit (checked here), with origin set to GitHub.
RUN C:\cygwin64\bin\bash.exe --login -c "curl -fsSL -o /tmp/opam-repository.bundle {{sources_url}}/opam-repository.bundle && git clone --branch master /tmp/opam-repository.bundle /home/opam/opam-repository && rm /tmp/opam-repository.bundle && git -C /home/opam/opam-repository remote set-url origin https://github.com/ocaml/opam-repository.git && test \"$(git -C /home/opam/opam-repository rev-parse HEAD)\" = {{opam_repository_commit}}"
ENV OPAMROOT="C:\opam\.opam"
RUN opam init -k git -a "C:\cygwin64\home\opam\opam-repository" --bare --disable-sandboxing
RUN C:\cygwin64\bin\bash.exe --login -c "rm -rf /cygdrive/c/opam/.opam/repo/default/.git"
COPY Dockerfile /Dockerfile.opam

# The compiler (upstream's second Dockerfile, built on the image above;
# stage `opam` alone is the compiler-less `<os>-opam` image).
# difference(one-recipe-two-stages): upstream builds the compiler from a
# second Dockerfile on the pushed `<os>-opam` image; Kiln keeps one recipe
# and names the stage, so stage `opam` alone is that image.
FROM opam AS compiler
ENV OPAMYES="1" OPAMCONFIRMLEVEL="unsafe-yes" OPAMERRLOGLEN="0" OPAMPRECISETRACKING="1"
# difference(archive-mirror-during-build): compiler archives come from the
# sources server's opam cache while Kiln builds (upstream sets no mirror on
# Windows); the line is removed once the switch is made.
RUN powershell -NoProfile -Command "Add-Content -Path C:\opam\.opam\config -Value 'archive-mirrors: \"{{sources_url}}/opam-cache\"'"
RUN opam switch create {{ocaml_switch}} --packages={{opam_packages}},system-mingw
RUN opam pin add -k version {{ocaml_package_name}} {{ocaml_package_version}}
# difference(archive-mirror-during-build): the build-time mirror removed.
RUN powershell -NoProfile -Command "(Get-Content C:\opam\.opam\config) | Where-Object { $_ -notmatch '^archive-mirrors:' } | Set-Content C:\opam\.opam\config"
ENTRYPOINT ["opam", "exec", "--"]
CMD ["cmd.exe"]
# difference(kiln-labels): what Kiln built, for `docker inspect`.
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}/{{port}}"
COPY Dockerfile /Dockerfile.ocaml
